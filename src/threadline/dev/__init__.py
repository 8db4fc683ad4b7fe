"""Development tooling, apart from the runtime: throwaway Postgres and Redis servers
(`threadline services`, the test run, the benchmarks). Nothing here is imported when serving."""
