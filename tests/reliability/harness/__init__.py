"""The shared reliability harness (RELIABILITY.md §4.1): real processes, ledgers as oracles, a checker.

    processes  spawn workers, the API server, the fake LLM and the fake CLI agent in their own sessions
    ledgers    the `effects` table (committed with the step) and the `executions` log (written aside)
    flows      flows for the scenarios; workers load them by path (`FLOWS_PATH`)
    faults     SIGKILL / SIGSTOP / SIGCONT by pid; a procfs scan for marked survivors
    proxy      an asyncio TCP fault proxy (delay, reset, blackhole) between workers and PostgreSQL
    checker    after every scenario: `baton doctor`'s queries plus the ledger rules; dumps on failure

Test parameters (§4.1): lease 3 s, heartbeat 0.5 s, reaper 0.5 s (`processes.LEASE_S`, …).
Every scenario takes a seed: BATON_RELIABILITY_SEED, else a random one, printed (`processes.scenario_seed`).
"""
