"""frozenrep: frozen-backbone transfer studies (Lin et al. 2022; Vasconcelos et al. 2022) as a workflow."""

__version__ = "0.1.0"
