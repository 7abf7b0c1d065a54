"""Layers, written on pynnx's public API only."""

from . import initializers as initializers
from .linear import Linear as Linear

__all__ = ["Linear", "initializers"]

from . import activations as activations  # noqa: E402
from .activations import *  # noqa: E402, F403
from .conv import Conv as Conv  # noqa: E402
from .conv import ConvTranspose as ConvTranspose  # noqa: E402
from .dropout import Dropout as Dropout  # noqa: E402
from .dtypes import LayerArgumentError as LayerArgumentError  # noqa: E402
from .embedding import Embed as Embed  # noqa: E402
from .linear import Einsum as Einsum  # noqa: E402
from .linear import LinearGeneral as LinearGeneral  # noqa: E402
from .normalization import BatchNorm as BatchNorm  # noqa: E402
from .normalization import GroupNorm as GroupNorm  # noqa: E402
from .normalization import InstanceNorm as InstanceNorm  # noqa: E402
from .normalization import LayerNorm as LayerNorm  # noqa: E402
from .normalization import RMSNorm as RMSNorm  # noqa: E402
from .pooling import avg_pool as avg_pool  # noqa: E402
from .pooling import max_pool as max_pool  # noqa: E402
from .pooling import min_pool as min_pool  # noqa: E402
from .pooling import pool as pool  # noqa: E402

__all__ += activations.__all__
__all__ += ["Conv", "ConvTranspose", "Dropout", "Einsum", "Embed", "LayerArgumentError"]
__all__ += ["LinearGeneral", "BatchNorm", "GroupNorm", "InstanceNorm", "LayerNorm", "RMSNorm"]
__all__ += ["avg_pool", "max_pool", "min_pool", "pool"]

from .lora import LoRA as LoRA  # noqa: E402
from .lora import LoRALinear as LoRALinear  # noqa: E402
from .lora import LoRAParam as LoRAParam  # noqa: E402

__all__ += ["LoRA", "LoRALinear", "LoRAParam"]

from .recurrent import RNN as RNN  # noqa: E402
from .recurrent import Bidirectional as Bidirectional  # noqa: E402
from .recurrent import GRUCell as GRUCell  # noqa: E402
from .recurrent import LSTMCell as LSTMCell  # noqa: E402
from .recurrent import OptimizedLSTMCell as OptimizedLSTMCell  # noqa: E402
from .recurrent import RNNCellBase as RNNCellBase  # noqa: E402
from .recurrent import SimpleCell as SimpleCell  # noqa: E402

__all__ += ["RNN", "Bidirectional", "GRUCell", "LSTMCell", "OptimizedLSTMCell", "RNNCellBase"]
__all__ += ["SimpleCell"]

from .attention import MultiHeadAttention as MultiHeadAttention  # noqa: E402
from .attention import combine_masks as combine_masks  # noqa: E402
from .attention import dot_product_attention as dot_product_attention  # noqa: E402
from .attention import dot_product_attention_weights as dot_product_attention_weights  # noqa: E402
from .attention import make_attention_mask as make_attention_mask  # noqa: E402
from .attention import make_causal_mask as make_causal_mask  # noqa: E402

__all__ += ["MultiHeadAttention", "combine_masks", "dot_product_attention"]
__all__ += ["dot_product_attention_weights", "make_attention_mask", "make_causal_mask"]

from .initializers import InitializerLike as Initializer  # noqa: E402
from .weight_normalization import SpectralNorm as SpectralNorm  # noqa: E402
from .weight_normalization import WeightNorm as WeightNorm  # noqa: E402

__all__ += ["Initializer", "SpectralNorm", "WeightNorm"]
