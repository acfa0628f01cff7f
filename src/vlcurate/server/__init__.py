"""The DataAgent platform: a coordinator that hands work units to untrusted agents, verifies what
they send (quorum, hidden gold, reputation), pays validated work into an append-only ledger, and
shows it all live. `vlcurate serve` runs it; `vlcurate.server.app.create_app` builds the app."""
