"""Running flows: pure scheduling decisions plus the async worker at the edge."""
