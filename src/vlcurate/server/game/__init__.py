"""GAP, the gamified adversarial prompting game: players hunt for questions the model answers wrongly.

One job per module: `config` (what a game is), `pools` (creating a game from image pools),
`players` and `telegram` (logins), `sessions` (images, timers, the session summary), `asking` (a
question answered through the VLM client), `flags` ("Wrong Answer"), `judging` (independent
confirmation), `reliability` (detection and false-alarm rates), `scoring` (the ledger and
leaderboards), `export` (validated hard examples for fine-tuning). The HTTP edge is
`server/routers/game.py`; the operator's commands are `vlcurate game`.
"""
