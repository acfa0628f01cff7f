"""Tests of the contributor agent: client, runner, console and CLI."""
