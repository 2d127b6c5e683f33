"""What a trained model is made of, shared by every stage: its checkpoint, its pretrained weights, its adapters.

    model, meta = load_model(run.checkpoint("best"))

    checkpoint.py  atomic save, safe load, the model a checkpoint describes
    weights.py     --weights: ImageNet, a state-dict file or none
    lora.py        LoRA adapters: inject, count, merge
    deploy.py      the deploy model: LoRA merged, BatchNorm folded (export writes it; verify re-derives its facts)
    macs.py        multiply-accumulates of one forward pass (the manifest's and `edgetl bench`'s MACs)

Building a backbone is edgetl/backbones/ (below the recipe, which names one).
"""
