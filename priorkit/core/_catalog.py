"""Static catalog of the 69 method-card ids (``shared/methods/*.md``), in card order.

One dict per id with the facts that never change: the paper's title and venue year, the priorkit family
(package folder) and kind of part the method is, its card file, the official code repository as the card
names it (``""`` where the card found none) and a one-sentence summary. What priorkit has built for each
id (status, module, what is missing) lives in ``priorkit.core.registry``, not here.

Notes: ``protopnet``'s card heading is "ProtoPNet base"; the title here is the paper's. ``gg_prior``'s
official code is a Hugging Face Space, not a GitHub repository. ``hessian_alignment`` covers the card's
two variants ``hgp`` and ``hutchinson``; its code is the ``HessianAlignment`` folder of the repository.
"""

CATALOG: tuple[dict, ...] = (
    # --- prototypes-interpretable.md ---
    {
        "id": "protopnet",
        "title": "This Looks Like That: Deep Learning for Interpretable Image Recognition",
        "year": 2019,
        "family": "prototypes",
        "kind": "head",
        "card": "prototypes-interpretable.md",
        "official_code": "cfchen-duke/ProtoPNet",
        "summary": (
            "Classifies by similarity of image patches to learned class prototypes, trained in warm, "
            "joint, push and last stages."
        ),
    },
    {
        "id": "pe_net",
        "title": "Prototype-based Embedding Network for Scene Graph Generation",
        "year": 2023,
        "family": "prototypes",
        "kind": "head",
        "card": "prototypes-interpretable.md",
        "official_code": "VL-Group/PENET",
        "summary": (
            "Predicts scene-graph predicates by matching subject-object embeddings to predicate prototypes "
            "in one space."
        ),
    },
    {
        "id": "st_protopnet",
        "title": "Learning Support and Trivial Prototypes for Interpretable Image Classification",
        "year": 2023,
        "family": "prototypes",
        "kind": "head",
        "card": "prototypes-interpretable.md",
        "official_code": "cwangrun/ST-ProtoPNet",
        "summary": (
            "Adds boundary-near support prototypes beside ProtoPNet's trivial prototypes, in two branches "
            "on one backbone."
        ),
    },
    {
        "id": "prob_psenn",
        "title": "Uncertainty-Aware Explanations Through Probabilistic Self-Explainable Neural Networks",
        "year": 2024,
        "family": "prototypes",
        "kind": "head",
        "card": "prototypes-interpretable.md",
        "official_code": "",
        "summary": (
            "Learns distributions over prototypes so a prototype classifier reports the uncertainty of its "
            "explanations."
        ),
    },
    {
        "id": "explaining_prototypes",
        "title": ("This Looks Like That, Because ... Explaining Prototypes for Interpretable Image Recognition"),
        "year": 2021,
        "family": "prototypes",
        "kind": "estimator",
        "card": "prototypes-interpretable.md",
        "official_code": "M-Nauta/Explaining_Prototypes",
        "summary": (
            "Measures how hue, shape, texture, contrast and saturation drive each prototype's similarity, post hoc."
        ),
    },
    {
        "id": "robust_stable_cbc",
        "title": "A Robust Prototype-Based Network with Interpretable RBF Classifier Foundations",
        "year": 2025,
        "family": "prototypes",
        "kind": "head",
        "card": "prototypes-interpretable.md",
        "official_code": "nec-research/enlaight",
        "summary": (
            "Stable classification-by-components reasoning over RBF detections, with a loss that maximises "
            "a certified radius."
        ),
    },
    {
        "id": "eval_protopnet",
        "title": ("Evaluation and Improvement of Interpretability for Self-Explainable Part-Prototype Networks"),
        "year": 2023,
        "family": "prototypes",
        "kind": "estimator",
        "card": "prototypes-interpretable.md",
        "official_code": "hqhQAQ/EvalProtoPNet",
        "summary": (
            "Scores part-prototype consistency and stability, and raises both with shallow-deep alignment "
            "and score aggregation."
        ),
    },
    {
        "id": "ecg_digital_phenotypes",
        "title": "Prototype Learning to Create Refined Interpretable Digital Phenotypes from ECGs",
        "year": 2025,
        "family": "prototypes",
        "kind": "estimator",
        "card": "prototypes-interpretable.md",
        "official_code": "",
        "summary": (
            "Links a trained ECG prototype model's activations to clinical phenotypes on an external cohort, post hoc."
        ),
    },
    {
        "id": "protoecgnet",
        "title": (
            "ProtoECGNet: Case-Based Interpretable Deep Learning for Multi-Label ECG Classification with "
            "Contrastive Learning"
        ),
        "year": 2025,
        "family": "prototypes",
        "kind": "system",
        "card": "prototypes-interpretable.md",
        "official_code": "sahilsethi0105/protoecgnet",
        "summary": (
            "Three-branch multi-label prototype model for 12-lead ECGs with a co-occurrence-aware "
            "contrastive prototype loss."
        ),
    },
    {
        "id": "psg",
        "title": "Panoptic Scene Graph Generation",
        "year": 2022,
        "family": "prototypes",
        "kind": "system",
        "card": "prototypes-interpretable.md",
        "official_code": "Jingkang50/OpenPSG",
        "summary": (
            "Scene graphs over panoptic segments: task, metric and one-stage triplet-query baselines with "
            "Hungarian matching."
        ),
    },
    # --- prototypes-fewshot-ood.md ---
    {
        "id": "fopro",
        "title": "FoPro: Few-Shot Guided Robust Webly-Supervised Prototypical Learning",
        "year": 2023,
        "family": "prototypes",
        "kind": "system",
        "card": "prototypes-fewshot-ood.md",
        "official_code": "yuleiqin/fopro",
        "summary": (
            "Webly-supervised learning guided by few real shots: a prototype memory and relation head "
            "clean noisy web labels."
        ),
    },
    {
        "id": "protogcd",
        "title": "ProtoGCD: Unified and Unbiased Prototype Learning for Generalized Category Discovery",
        "year": 2025,
        "family": "prototypes",
        "kind": "head",
        "card": "prototypes-fewshot-ood.md",
        "official_code": "mashijie1028/ProtoGCD",
        "summary": (
            "Cosine prototype classifier over old and new classes for category discovery, with balanced pseudo-labels."
        ),
    },
    {
        "id": "slk",
        "title": "Transductive Few-Shot Learning: Clustering is All You Need?",
        "year": 2021,
        "family": "prototypes",
        "kind": "head",
        "card": "prototypes-fewshot-ood.md",
        "official_code": "imtiazziko/SLK-few-shot",
        "summary": (
            "Transductive few-shot inference by prototype clustering with Laplacian regularisation and a "
            "bound optimizer."
        ),
    },
    {
        "id": "palm",
        "title": "Learning with Mixture of Prototypes for Out-of-Distribution Detection",
        "year": 2024,
        "family": "prototypes",
        "kind": "loss",
        "card": "prototypes-fewshot-ood.md",
        "official_code": "jeff024/PALM",
        "summary": (
            "Models each class as a mixture of hyperspherical prototypes with MLE and contrastive losses "
            "for OOD detection."
        ),
    },
    {
        "id": "ins",
        "title": (
            "Rethinking Multiple Instance Learning for Whole Slide Image Classification: A Good Instance "
            "Classifier is All You Need"
        ),
        "year": 2024,
        "family": "prototypes",
        "kind": "system",
        "card": "prototypes-fewshot-ood.md",
        "official_code": "miccaiif/INS",
        "summary": (
            "Trains a WSI instance classifier from bag labels with prototype pseudo-labels and weakly "
            "supervised contrast."
        ),
    },
    {
        "id": "tmv_hlp",
        "title": "Transductive Multi-view Zero-Shot Learning",
        "year": 2015,
        "family": "prototypes",
        "kind": "system",
        "card": "prototypes-fewshot-ood.md",
        "official_code": "",
        "summary": (
            "Transductive zero-shot learning: multi-view CCA embedding, then heterogeneous hypergraph "
            "label propagation."
        ),
    },
    {
        "id": "inp_former",
        "title": ("Exploring Intrinsic Normal Prototypes within a Single Image for Universal Anomaly Detection"),
        "year": 2025,
        "family": "prototypes",
        "kind": "system",
        "card": "prototypes-fewshot-ood.md",
        "official_code": "luow23/INP-Former",
        "summary": (
            "Detects anomalies by reconstructing ViT features from normal prototypes extracted from the "
            "test image itself."
        ),
    },
    {
        "id": "teen",
        "title": "Few-Shot Class-Incremental Learning via Training-Free Prototype Calibration",
        "year": 2023,
        "family": "prototypes",
        "kind": "head",
        "card": "prototypes-fewshot-ood.md",
        "official_code": "wangkiw/TEEN",
        "summary": (
            "Training-free calibration: shifts new-class prototypes toward similarity-weighted base "
            "prototypes in FSCIL."
        ),
    },
    {
        "id": "susana",
        "title": (
            "SuSana Distancia is all you need: Enforcing class separability in metric learning via two "
            "novel distance-based loss functions for few-shot image classification"
        ),
        "year": 2023,
        "family": "prototypes",
        "kind": "loss",
        "card": "prototypes-fewshot-ood.md",
        "official_code": "",
        "summary": (
            "Two episodic distance losses, Proto-Triplet and ICNN, that sharpen class separability in "
            "few-shot metric learning."
        ),
    },
    {
        "id": "pros_gan",
        "title": "Prototype-supervised Adversarial Network for Targeted Attack of Deep Hashing",
        "year": 2021,
        "family": "prototypes",
        "kind": "system",
        "card": "prototypes-fewshot-ood.md",
        "official_code": "xunguangwang/ProS-GAN",
        "summary": (
            "Generates targeted adversarial examples against deep hashing, supervised by a learned "
            "prototype of the target label."
        ),
    },
    {
        "id": "nb_vs_lr",
        "title": "Revisiting Discriminative vs. Generative Classifiers: Theory and Implications",
        "year": 2023,
        "family": "prototypes",
        "kind": "head",
        "card": "prototypes-fewshot-ood.md",
        "official_code": "ML-GSAI/Revisiting-Dis-vs-Gen-Classifiers",
        "summary": (
            "Gaussian naive-Bayes linear probe vs logistic regression on frozen features, with "
            "sample-complexity simulations."
        ),
    },
    # --- regularizers-theory.md ---
    {
        "id": "pskd",
        "title": "Self-Knowledge Distillation with Progressive Refinement of Targets",
        "year": 2021,
        "family": "regularizers",
        "kind": "hook",
        "card": "regularizers-theory.md",
        "official_code": "lgcnsai/PS-KD-Pytorch",
        "summary": (
            "Self-distillation that mixes the model's own last-epoch predictions into the targets with a "
            "growing weight."
        ),
    },
    {
        "id": "pgdnm",
        "title": "Policy Gradient-Driven Noise Mask",
        "year": 2024,
        "family": "regularizers",
        "kind": "hook",
        "card": "regularizers-theory.md",
        "official_code": "ogrenenmakine/Policy-Gradient-Driven-Noise-Mask",
        "summary": (
            "A policy network trained by policy gradient learns image-conditional noise masks used in a "
            "pretraining stage."
        ),
    },
    {
        "id": "ovor",
        "title": ("OVOR: OnePrompt with Virtual Outlier Regularization for Rehearsal-Free Class-Incremental Learning"),
        "year": 2024,
        "family": "regularizers",
        "kind": "loss",
        "card": "regularizers-theory.md",
        "official_code": "jpmorganchase/ovor",
        "summary": (
            "One shared prompt for rehearsal-free class-incremental learning plus a virtual-outlier energy regulariser."
        ),
    },
    {
        "id": "tjepa",
        "title": "T-JEPA: Augmentation-Free Self-Supervised Learning for Tabular Data",
        "year": 2025,
        "family": "regularizers",
        "kind": "system",
        "card": "regularizers-theory.md",
        "official_code": "jose-melo/t-jepa",
        "summary": (
            "Augmentation-free tabular self-supervision: predict latents of some features from latents of the others."
        ),
    },
    {
        "id": "stn",
        "title": (
            "Self-Tuning Networks: Bilevel Optimization of Hyperparameters using Structured Best-Response Functions"
        ),
        "year": 2019,
        "family": "regularizers",
        "kind": "hook",
        "card": "regularizers-theory.md",
        "official_code": "asteroidhouse/self-tuning-networks",
        "summary": (
            "Tunes regularisation hyperparameters online via a gated best-response approximation of the weights."
        ),
    },
    {
        "id": "msbreg",
        "title": "An Embedding-Dynamic Approach to Self-supervised Learning",
        "year": 2022,
        "family": "regularizers",
        "kind": "loss",
        "card": "regularizers-theory.md",
        "official_code": "",
        "summary": (
            "Adds attractive and dispersive embedding-dynamics terms to joint-embedding SSL losses to prevent collapse."
        ),
    },
    {
        "id": "elr",
        "title": "Early-Learning Regularization Prevents Memorization of Noisy Labels",
        "year": 2020,
        "family": "regularizers",
        "kind": "loss",
        "card": "regularizers-theory.md",
        "official_code": "shengliu66/ELR",
        "summary": ("Keeps predictions near a running average of early predictions so noisy labels are not memorised."),
    },
    {
        "id": "hessian_alignment",
        "title": "Understanding Hessian Alignment for Domain Generalization",
        "year": 2023,
        "family": "regularizers",
        "kind": "loss",
        "card": "regularizers-theory.md",
        "official_code": "huawei-noah/Federated-Learning",
        "summary": (
            "Penalises differences of per-domain head gradients and Hessians (HGP or Hutchinson) for "
            "domain generalization."
        ),
    },
    {
        "id": "drm",
        "title": "Domain-Specific Risk Minimization for Out-of-Distribution Generalization",
        "year": 2023,
        "family": "regularizers",
        "kind": "head",
        "card": "regularizers-theory.md",
        "official_code": "yfzhang114/AdaNPC",
        "summary": ("Keeps one classifier head per source domain and selects or adapts among them per test sample."),
    },
    {
        "id": "pretrain_advantage",
        "title": "On the Provable Advantage of Unsupervised Pretraining",
        "year": 2024,
        "family": "theory",
        "kind": "estimator",
        "card": "regularizers-theory.md",
        "official_code": "",
        "summary": (
            "Two-stage estimator (latent-model MLE, then ERM) with an excess-risk bound showing when pretraining helps."
        ),
    },
    {
        "id": "prompt_pac_bayes",
        "title": "Understanding prompt engineering may not require rethinking generalization",
        "year": 2024,
        "family": "theory",
        "kind": "estimator",
        "card": "regularizers-theory.md",
        "official_code": "",
        "summary": (
            "PAC-Bayes bound for discrete-prompt classifiers with a language-model prior, plus a greedy "
            "bound-aware prompt search."
        ),
    },
    {
        "id": "gedi",
        "title": "Unifying Self-Supervised Clustering and Energy-Based Models",
        "year": 2025,
        "family": "regularizers",
        "kind": "loss",
        "card": "regularizers-theory.md",
        "official_code": "emsansone/GEDI",
        "summary": (
            "Lower bound joining an energy-based generative term with cluster invariance and uniformity terms for SSL."
        ),
    },
    # --- sparsity-training.md ---
    {
        "id": "iss_p",
        "title": "Iterative Soft Shrinkage Learning for Efficient Image Super-Resolution",
        "year": 2023,
        "family": "sparsity",
        "kind": "mask",
        "card": "sparsity-training.md",
        "official_code": "Jiamian-Wang/Iterative-Soft-Shrinkage-SR",
        "summary": (
            "Sparse training from scratch by iteratively shrinking small weights softly, then fine-tuning "
            "a frozen hard mask."
        ),
    },
    {
        "id": "ftwt",
        "title": ("Fire Together Wire Together: A Dynamic Pruning Approach with Self-Supervised Mask Prediction"),
        "year": 2022,
        "family": "sparsity",
        "kind": "head",
        "card": "sparsity-training.md",
        "official_code": "selkerdawy/FTWT",
        "summary": (
            "Per-layer gates predict per-sample channel masks, trained with a self-supervised BCE target "
            "from activations."
        ),
    },
    {
        "id": "trp",
        "title": "Trained Rank Pruning for Efficient Deep Neural Networks",
        "year": 2020,
        "family": "sparsity",
        "kind": "hook",
        "card": "sparsity-training.md",
        "official_code": "yuhuixu1993/Trained-Rank-Pruning",
        "summary": (
            "Projects conv weights to low rank during training with a nuclear-norm subgradient, then factorises them."
        ),
    },
    {
        "id": "reprogram_lt",
        "title": (
            "Reprogramming under constraints: Revisiting efficient and reliable transferability of lottery tickets"
        ),
        "year": 2023,
        "family": "sparsity",
        "kind": "system",
        "card": "sparsity-training.md",
        "official_code": "landskape-ai/Reprogram_LT",
        "summary": (
            "Compares lottery tickets and dense models under linear probing and visual prompting, for "
            "accuracy and calibration."
        ),
    },
    {
        "id": "granet",
        "title": "Sparse Training via Boosting Pruning Plasticity with Neuroregeneration",
        "year": 2021,
        "family": "sparsity",
        "kind": "mask",
        "card": "sparsity-training.md",
        "official_code": "Shiweiliuiiiiiii/GraNet",
        "summary": (
            "Gradual global magnitude pruning with zero-cost neuroregeneration that regrows as many "
            "weights as it prunes."
        ),
    },
    {
        "id": "pdp",
        "title": "PDP: Parameter-free Differentiable Pruning is All You Need",
        "year": 2023,
        "family": "sparsity",
        "kind": "mask",
        "card": "sparsity-training.md",
        "official_code": "",
        "summary": (
            "Differentiable pruning with a soft mask computed from the weights and target sparsity, no "
            "extra parameters."
        ),
    },
    {
        "id": "pgf_nm",
        "title": "Progressive Gradient Flow for Robust N:M Sparsity Training in Transformers",
        "year": 2024,
        "family": "sparsity",
        "kind": "mask",
        "card": "sparsity-training.md",
        "official_code": "abhibambhaniya/progressive_gradient_flow_nm_sparsity",
        "summary": (
            "N:M sparse training that gradually restricts gradient flow to pruned weights via decaying "
            "masks or patterns."
        ),
    },
    # --- sparsity-compression.md ---
    {
        "id": "darex",
        "title": "DARE the Extreme: Revisiting Delta-Parameter Pruning For Fine-Tuned Models",
        "year": 2025,
        "family": "sparsity",
        "kind": "transform",
        "card": "sparsity-compression.md",
        "official_code": "vengdeng/DAREx",
        "summary": (
            "Prunes delta parameters of fine-tuned models with corrected rescaling (DARE baseline) and "
            "AdamR fine-tuning."
        ),
    },
    {
        "id": "essential_sparsity",
        "title": "The Emergence of Essential Sparsity in Large Pre-trained Models: The Weights that Matter",
        "year": 2023,
        "family": "sparsity",
        "kind": "transform",
        "card": "sparsity-compression.md",
        "official_code": "VITA-Group/essential_sparsity",
        "summary": (
            "One-shot global magnitude pruning of a pretrained model and the sparsity knee before performance drops."
        ),
    },
    {
        "id": "turbo_vbi",
        "title": "Structured Bayesian Compression for Deep Neural Networks Based on The Turbo-VBI Approach",
        "year": 2023,
        "family": "sparsity",
        "kind": "loss",
        "card": "sparsity-compression.md",
        "official_code": "",
        "summary": (
            "Bayesian training with a structured sparse prior refreshed by Turbo-VBI, yielding block and "
            "neuron pruning."
        ),
    },
    {
        "id": "prosparse",
        "title": ("ProSparse: Introducing and Enhancing Intrinsic Activation Sparsity within Large Language Models"),
        "year": 2025,
        "family": "sparsity",
        "kind": "loss",
        "card": "sparsity-compression.md",
        "official_code": "",
        "summary": (
            "Makes LLM FFNs activation-sparse: ReLU swap, progressive sine-scheduled L1 on activations, then FATReLU."
        ),
    },
    {
        "id": "gg_prior",
        "title": ("It Takes a Good Model to Train a Good Model: Generalized Gaussian Priors for Optimized LLMs"),
        "year": 2025,
        "family": "sparsity",
        "kind": "transform",
        "card": "sparsity-compression.md",
        "official_code": "shifeng3711/gg_prior",
        "summary": (
            "Generalized-Gaussian weight prior used for init, rate-penalised training, post-hoc reshaping "
            "and an 8-bit codec."
        ),
    },
    {
        "id": "quantnas",
        "title": (
            "QuantNAS for super resolution: searching for efficient quantization-friendly architectures "
            "against quantization noise"
        ),
        "year": 2024,
        "family": "sparsity",
        "kind": "system",
        "card": "sparsity-compression.md",
        "official_code": "On-Point-RND/QuantNAS",
        "summary": (
            "Differentiable architecture and bit-width search for SR under quantization noise, with "
            "entropy regularisation."
        ),
    },
    # --- adapters-lowrank.md ---
    {
        "id": "sara",
        "title": ("SaRA: High-Efficient Diffusion Model Fine-tuning with Progressive Sparse Low-Rank Adaptation"),
        "year": 2025,
        "family": "adapters",
        "kind": "mask",
        "card": "adapters-lowrank.md",
        "official_code": "sjtuplayer/SaRA",
        "summary": (
            "Fine-tunes only near-zero pretrained weights, re-selected progressively, under a nuclear-norm "
            "low-rank constraint."
        ),
    },
    {
        "id": "glad",
        "title": "GLAD: Generalizable Tuning for Vision-Language Models",
        "year": 2025,
        "family": "adapters",
        "kind": "hook",
        "card": "adapters-lowrank.md",
        "official_code": "",
        "summary": (
            "Gradient regulariser for LoRA tuning of vision-language models that steers updates toward "
            "flat, robust regions."
        ),
    },
    {
        "id": "pela",
        "title": "PELA: Learning Parameter-Efficient Models with Low-Rank Approximation",
        "year": 2024,
        "family": "adapters",
        "kind": "transform",
        "card": "adapters-lowrank.md",
        "official_code": "guoyang9/PELA",
        "summary": (
            "Factorises a pretrained Transformer's linears into low rank, then recovers accuracy by "
            "feature distillation."
        ),
    },
    {
        "id": "said",
        "title": "Intrinsic Dimensionality Explains the Effectiveness of Language Model Fine-Tuning",
        "year": 2021,
        "family": "adapters",
        "kind": "adapter",
        "card": "adapters-lowrank.md",
        "official_code": "",
        "summary": (
            "Fine-tunes in a random low-dimensional subspace of all weights and measures the intrinsic dimension d90."
        ),
    },
    {
        "id": "sora",
        "title": "Sparse Low-rank Adaptation of Pre-trained Language Models",
        "year": 2023,
        "family": "adapters",
        "kind": "adapter",
        "card": "adapters-lowrank.md",
        "official_code": "TsinghuaC3I/SoRA",
        "summary": (
            "LoRA with a per-rank gate trained by proximal gradient so that unneeded rank components are pruned."
        ),
    },
    {
        "id": "sorsa",
        "title": (
            "SORSA: Singular Values and Orthonormal Regularized Singular Vectors Adaptation of Large Language Models"
        ),
        "year": 2024,
        "family": "adapters",
        "kind": "adapter",
        "card": "adapters-lowrank.md",
        "official_code": "Gunale0926/SORSA",
        "summary": (
            "Adapts the SVD principal subspace with separate singular values and vectors kept orthonormal "
            "by a regulariser."
        ),
    },
    {
        "id": "gs_lora",
        "title": "Practical Continual Forgetting for Pre-trained Vision Models",
        "year": 2025,
        "family": "adapters",
        "kind": "adapter",
        "card": "adapters-lowrank.md",
        "official_code": "bjzhb666/GS-LoRA",
        "summary": (
            "Continual class forgetting with LoRA on FFN layers, group-sparse selection and a bounded forgetting loss."
        ),
    },
    {
        "id": "my3dgen",
        "title": "My3DGen: Building Lightweight Personalized 3D Generative Model",
        "year": 2025,
        "family": "adapters",
        "kind": "system",
        "card": "adapters-lowrank.md",
        "official_code": "luchaoqi/my3dgen",
        "summary": (
            "Personalises a 3D-aware GAN to one identity with LoRA on its layers and a symmetry-identity regulariser."
        ),
    },
    # --- generative-restoration.md ---
    {
        "id": "gdp",
        "title": "Generative Diffusion Prior for Unified Image Restoration and Enhancement",
        "year": 2023,
        "family": "priors",
        "kind": "system",
        "card": "generative-restoration.md",
        "official_code": "Fayeben/GenerativeDiffusionPrior",
        "summary": (
            "Guides a pretrained unconditional DDPM with measurement-loss gradients on x0 to restore, "
            "fitting the degradation."
        ),
    },
    {
        "id": "diffir",
        "title": "DiffIR: Efficient Diffusion Model for Image Restoration",
        "year": 2023,
        "family": "priors",
        "kind": "system",
        "card": "generative-restoration.md",
        "official_code": "Zj-BinXia/DiffIR",
        "summary": ("Runs a tiny diffusion model over a compact prior vector that modulates a restoration network."),
    },
    {
        "id": "ediffsr",
        "title": ("EDiffSR: An Efficient Diffusion Probabilistic Model for Remote Sensing Image Super-Resolution"),
        "year": 2024,
        "family": "priors",
        "kind": "system",
        "card": "generative-restoration.md",
        "official_code": "XY-boy/EDiffSR",
        "summary": (
            "Remote-sensing SR with a mean-reverting SDE, a light NAFNet-style noise network and a "
            "conditioning pre-module."
        ),
    },
    {
        "id": "pcl_sr",
        "title": "A Practical Contrastive Learning Framework for Single-Image Super-Resolution",
        "year": 2023,
        "family": "priors",
        "kind": "loss",
        "card": "generative-restoration.md",
        "official_code": "Aitical/PCL-SISR",
        "summary": (
            "Contrastive loss for SR with sharpened positives, blurred hard negatives and a high-frequency "
            "learned embedding."
        ),
    },
    {
        "id": "marconet_pp",
        "title": "Enhanced Generative Structure Prior for Chinese Text Image Super-resolution",
        "year": 2025,
        "family": "priors",
        "kind": "system",
        "card": "generative-restoration.md",
        "official_code": "csxmli2016/MARCONetPlusPlus",
        "summary": (
            "Chinese text SR guided by a codebook-times-style StyleGAN structure prior for the characters recognised."
        ),
    },
    {
        "id": "r0",
        "title": "Rewards Are Enough for Fast Photo-Realistic Text-to-image Generation",
        "year": 2025,
        "family": "priors",
        "kind": "system",
        "card": "generative-restoration.md",
        "official_code": "",
        "summary": (
            "Turns a pretrained diffusion model into a few-step generator by regularised maximisation of "
            "differentiable rewards."
        ),
    },
    {
        "id": "sfd",
        "title": (
            "Score Forgetting Distillation: A Swift, Data-Free Method for Machine Unlearning in Diffusion Models"
        ),
        "year": 2025,
        "family": "priors",
        "kind": "loss",
        "card": "generative-restoration.md",
        "official_code": "tqch/score-forgetting-distillation",
        "summary": (
            "Data-free unlearning by score distillation into a one-step generator, matching forget classes "
            "to a safe class."
        ),
    },
    {
        "id": "adapt_then_unlearn",
        "title": (
            "Adapt then Unlearn: Exploring Parameter Space Semantics for Unlearning in Generative Adversarial Networks"
        ),
        "year": 2024,
        "family": "priors",
        "kind": "loss",
        "card": "generative-restoration.md",
        "official_code": "atriguha/Adapt_Unlearn",
        "summary": (
            "Unlearns a GAN feature by fine-tuning on positives while repelling parameters from a "
            "negatives-adapted copy."
        ),
    },
    # --- fields-inverse-medical.md ---
    {
        "id": "orex",
        "title": "OReX: Object Reconstruction from Planar Cross-sections Using Neural Fields",
        "year": 2023,
        "family": "priors",
        "kind": "system",
        "card": "fields-inverse-medical.md",
        "official_code": "haimsaw/OReX",
        "summary": (
            "Fits a neural indicator field to planar cross-sections with an iterative residual MLP and a "
            "gradient hinge loss."
        ),
    },
    {
        "id": "lpn",
        "title": "What's in a Prior? Learned Proximal Networks for Inverse Problems",
        "year": 2024,
        "family": "priors",
        "kind": "head",
        "card": "fields-inverse-medical.md",
        "official_code": "ZhenghanFang/learned-proximal-networks",
        "summary": (
            "Learns a network that is exactly a proximal operator via proximal matching, for convergent "
            "PnP and explicit priors."
        ),
    },
    {
        "id": "dgno",
        "title": (
            "DGNO: A Novel Physics-aware Neural Operator for Solving Forward and Inverse PDE Problems "
            "based on Deep, Generative Probabilistic Modeling"
        ),
        "year": 2025,
        "family": "priors",
        "kind": "system",
        "card": "fields-inverse-medical.md",
        "official_code": "yaohua32/DGenNO",
        "summary": (
            "Latent generative neural operator trained from unlabelled inputs and weak-form physics, for "
            "forward and inverse PDEs."
        ),
    },
    {
        "id": "raw_defense",
        "title": "All You Need is RAW: Defending Against Adversarial Attacks with Camera Image Pipelines",
        "year": 2022,
        "family": "priors",
        "kind": "system",
        "card": "fields-inverse-medical.md",
        "official_code": "",
        "summary": (
            "Purifies adversarial RGB inputs by mapping them to camera RAW space and rendering back before "
            "a frozen model."
        ),
    },
    {
        "id": "perturbed_mle",
        "title": (
            "A likelihood approach to nonparametric estimation of a singular distribution using deep generative models"
        ),
        "year": 2023,
        "family": "priors",
        "kind": "hook",
        "card": "fields-inverse-medical.md",
        "official_code": "",
        "summary": (
            "Adds Gaussian instance noise to data before likelihood training so singular distributions are "
            "estimated consistently."
        ),
    },
    {
        "id": "prlx_gan",
        "title": "Synthetic Generation and Latent Projection Denoising of Rim Lesions in Multiple Sclerosis",
        "year": 2025,
        "family": "priors",
        "kind": "system",
        "card": "fields-inverse-medical.md",
        "official_code": "agr78/PRLx-GAN",
        "summary": (
            "Class-conditional StyleGAN2-ADA synthesis and latent projection denoising of rare rim lesions "
            "for classifier training."
        ),
    },
    {
        "id": "projectedex",
        "title": "ProjectedEx: Enhancing Generation in Explainable AI for Prostate Cancer",
        "year": 2025,
        "family": "priors",
        "kind": "system",
        "card": "fields-inverse-medical.md",
        "official_code": "Richardqiyi/ProjectedEx",
        "summary": (
            "StylEx-type counterfactual explainer for prostate MRI classifiers with a projected "
            "discriminator and pyramid encoder."
        ),
    },
)
