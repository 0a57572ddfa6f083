"""Simulator front-ends: one module per venue, each a thin `recorder.sim.server.SimServer` subclass."""
