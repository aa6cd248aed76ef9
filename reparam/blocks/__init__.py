"""Training-time building blocks from the source papers (ACNet, RepVGG, SKNet, SENet, ScaleNet).

ACB and RepVGGBlock are linear multi-branch blocks: they expose ``get_equivalent_kernel_bias()``
and ``reparameterize()``. SKConv, SEBlock and SABlock are input-dependent or multi-resolution and
stay as they are; only their conv-BN pairs can be folded.
"""

from reparam.blocks.acb import ACB
from reparam.blocks.repvgg import RepVGGBlock
from reparam.blocks.sa import SABlock
from reparam.blocks.se import SEBasicBlock, SEBlock, SEBottleneck
from reparam.blocks.sk import SKConv, SKUnit

__all__ = ["ACB", "RepVGGBlock", "SABlock", "SEBasicBlock", "SEBlock", "SEBottleneck", "SKConv", "SKUnit"]
