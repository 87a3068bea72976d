"""Recurrent models. They know nothing about MPI: mpirnn.parallel runs them on a grid."""

from mpirnn.models.model import RecurrentModel, build_model

__all__ = ["RecurrentModel", "build_model"]
