"""Layers shared by the models."""
from mambaseg.nn.blocks import ConvNormAct, DoubleConv, ResidualBlock, ResidualDecoder, ResidualEncoder
from mambaseg.nn.mamba import Mamba
from mambaseg.nn.ppm import PyramidPooling
from mambaseg.nn.pvm import PVMLayer

__all__ = [
    "Mamba",
    "PVMLayer",
    "PyramidPooling",
    "ConvNormAct",
    "DoubleConv",
    "ResidualBlock",
    "ResidualEncoder",
    "ResidualDecoder",
]
