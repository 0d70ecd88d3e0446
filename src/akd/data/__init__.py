"""akd's lowest stage-independent layer for images: sources (folder layouts, videos, decoding, seeded sampling),
ImageNet's class list, and preprocessing (the target's resize/crop/normalise, the dataset every stage reads).
Every stage (models, train, export, evaluate) imports it; it imports no stage."""
