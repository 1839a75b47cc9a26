"""tibspace: tumour immune barriers, NET/collagen-I shields and T-cell exclusion
from multiplex tissue images, in physical units."""

__version__ = "0.1.0"
