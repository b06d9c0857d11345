"""The simulator's defaults that the command line shows: a module of constants, so building
`runwatch --help` does not import the population generator."""

from __future__ import annotations

SIM_ORG = "org-sim"
