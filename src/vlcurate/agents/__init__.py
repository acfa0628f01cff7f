"""The contributor-side agent: lease work from a coordinator, score it locally, submit, repeat.

`client` speaks the platform's HTTP API (retries, typed errors), `runner` is the lease -> fetch ->
decode -> score -> submit loop, and `console` shows what the agent is doing.
"""
