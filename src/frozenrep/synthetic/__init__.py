"""The embedded default's generators: data in the real formats, written from a seed.

``synthetic.<task>.generate(root, **datasets.<task>.generate)`` writes a dataset that
``data.<task>`` reads exactly as it reads the real one: COCO shape scenes, ADE20K texture regions,
Kinetics-layout motion videos. :mod:`frozenrep.synthetic.images` draws the labelled image sets the
tiny backbones are pretrained on. Nothing in :mod:`frozenrep.data` depends on this package.
"""
