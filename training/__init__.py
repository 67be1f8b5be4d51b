"""Training of `shapes_sd`, the built-in model that draws scenes of named shapes and colours.

    python -m training.train --out DIR            # train (GPU; minutes)
    python -m training.export --checkpoint DIR --out model_repository/shapes_sd/1
    python -m training.evaluate --model model_repository/shapes_sd/1

Everything is made here: the scenes, the tokenizer, the VAE, the text encoder and the UNet.
"""
