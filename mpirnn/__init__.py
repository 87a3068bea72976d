"""mpirnn: exact data- and sequence-parallel training of recurrent networks over MPI."""

__version__ = "0.1.0"
