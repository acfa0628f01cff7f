"""`vlcurate build`: a labelled image dataset from a plain-language request (DatasetAgent).

Stages, one module each: `spec` and `demand` (the request becomes a validated DatasetSpec),
`collect` (pool images with source and licence, retrieval over a faiss index), the image tools
(`ops.builder_ops`), `label` (classify, detect, segment), `supervise` (an independent check,
ALR, CBI, SSIM, label issues), `formats` and `export` (ImageFolder, COCO, YOLO, VOC, card), and
`job`, which runs them with resume.
"""
