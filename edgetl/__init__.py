"""edgetl: fine-tune a pretrained image classifier, fold and export it, verify it.

    edgetl run            # train -> export -> verify on the built-in sample data
"""

__version__ = "0.1.0"
