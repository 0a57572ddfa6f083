"""Process wiring behind the `recorder` command: recording with a live status table, the standalone
simulator, `recorder sql`, the terminal candles watch, signal handlers and the one error guard.

Library modules never import this package (`tests/test_layers.py` checks it): it sits on top of
the library, beside `recorder/cli.py`, which imports it inside its commands.
"""
