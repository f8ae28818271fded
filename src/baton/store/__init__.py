"""The only package that talks SQL: schema, migrations, and queries named by intent."""
