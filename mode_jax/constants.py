"""Every constant of the MoDE method and the CLIP recipe, in one place, with its source.

Code that needs one of these imports it from here; configs copy them as defaults.
"Paper" is Ma et al., "MoDE: CLIP Data Experts via Clustering", CVPR 2024
(arXiv 2404.16030); "reference" is the MetaCLIP repository, folder `mode/`.
"""

import math

# --- CLIP recipe (paper Sec. 4.1, following OpenAI CLIP / MetaCLIP) -----------
ADAM_B1 = 0.9                 # paper Sec. 4.1
ADAM_B2 = 0.98                # paper Sec. 4.1 (OpenAI CLIP Sec. 2.5)
ADAM_EPS = 1e-6               # OpenAI CLIP / MetaCLIP training code
WEIGHT_DECAY = 0.2            # paper Sec. 4.1 / MetaCLIP; only on WEIGHT_DECAY_ROLES
# Which parameters decay, by their role (models/roles.py). The reference rule,
# MetaCLIP src/training/main.py (OpenCLIP's main.py until 2026-06): no decay where
# p.ndim < 2 or the name contains bn/ln/bias/logit_scale/norm. On the unstacked
# OpenAI-layout CLIP that decays every matmul kernel (qkv, out, MLP, patch
# embedding, both projections), the token embedding and both positional
# embeddings (2-d), and exempts biases, LayerNorm gains, the 1-d class embedding,
# logit scale and logit bias. (OpenCLIP since 2026-06 also exempts the positional
# and class embeddings via no_weight_decay(); we follow MetaCLIP, MoDE's code.)
WEIGHT_DECAY_ROLES = ("kernel", "embedding", "position")
WARMUP_STEPS = 2000           # paper Sec. 4.1
PEAK_LR = {"B/32": 5e-4, "B/16": 5e-4, "L/14": 4e-4}   # paper Sec. 4.1
GLOBAL_BATCH = 32768          # paper Sec. 4.1
TOTAL_EPOCHS = 32             # paper Sec. 4.1: 12.8B seen pairs of 400M
SEED_EPOCHS = 27              # paper Sec. 4.1: experts fork at epoch 27
EXPERT_EPOCHS = 5             # paper Sec. 4.1: 32 - 27
LOGIT_SCALE_INIT = math.log(1 / 0.07)   # OpenAI CLIP Sec. 2.5
LOGIT_SCALE_MAX = math.log(100.0)       # OpenAI CLIP Sec. 2.5 (clamp at 100)
SIGLIP_SCALE_INIT = math.log(10.0)      # SigLIP (Zhai et al. 2023) Sec. 3
SIGLIP_BIAS_INIT = -10.0                # SigLIP Sec. 3
RRC_SCALE = (0.9, 1.0)        # MetaCLIP RandomResizedCrop scale
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)   # OpenAI CLIP preprocessing
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)   # OpenAI CLIP preprocessing
CONTEXT_LENGTH = 77           # OpenAI CLIP text tower
VOCAB_SIZE = 49408            # OpenAI CLIP BPE: 256 bytes*2 + 48894 merges + 2
QUICK_GELU_ALPHA = 1.702      # OpenAI CLIP QuickGELU: x * sigmoid(1.702 x)

# --- Clustering (paper Sec. 3.2, App. E; reference mode/) ----------------------
NUM_FINE_CLUSTERS = 1024      # m, paper Sec. 4.1 / Table 15
FINE_ITERS_PER_FILE = 50      # reference: online balanced k-means, per file
COARSE_ITERS = 100            # reference: balanced k-means on fine centers
EXPERT_CHOICES = (2, 4, 8, 16, 32)   # n, paper Sec. 4
OOC_RATIO = 0.02              # reference only: out-of-cluster pairs per expert

# --- Routing (paper Eq. 5-6; reference mode/ ensemble code) --------------------
# Reference formula (default):
#   a   = exp(0.5 - sqrt(N)) if N < SMALL_TASK_CLASSES else 0
#   tau = TAU_SCALE * log10(max(TAU_MIN_ARG, N - TAU_OFFSET))
#   w   = softmax(u / ENSEMBLE_TEMPERATURE)
SMALL_TASK_CLASSES = 10       # reference: few-class tasks get the prior a
SMALL_TASK_SHIFT = 0.5        # reference: exp(0.5 - sqrt(N))
TAU_SCALE = 5.0               # reference: smooth_weight[0] = 5.0
TAU_MIN_ARG = 10.0            # reference: max(10, N - 200)
TAU_OFFSET = 200.0            # reference: N - 200
ENSEMBLE_TEMPERATURE = 8.0    # reference: smooth_weight[1] = 8.0
# Paper formula (option): A_ls = exp(-||e_l - mu_s||^2 / lambda)
PAPER_LAMBDA = 0.2            # paper Sec. 3.3
PAPER_LARGE_TASK_CLASSES = 200   # paper: lambda / ln N when N > 200

# --- Clustering details (reference: kernelmachine/balanced-kmeans, which ------
# MoDE's mode/prep_hrchy.py imports as `kmeans_pytorch`) -----------------------
KMEANS_TOL = 1e-3             # reference KMeans.fit: stop when (sum_k ||shift_k||)^2 < tol
AUCTION_EPS_FRACTION = 1 / 50  # reference auction_lap: eps = (max - min score) / 50
AUCTION_EPS_MIN = 1e-4        # reference auction_lap: eps.clamp_min_(1e-4)
AUCTION_RETAIN_ROUNDS = 100   # reference auction_lap: last winners keep an eps bid for 100 rounds

# --- Caption embeddings (paper Sec. 3.1, 4.1; docs/method.md step 1) -----------------
PAPER_SENTENCE_ENCODER = "princeton-nlp/sup-simcse-bert-base-uncased"  # paper: supervised SimCSE BERT-base
PAPER_SENTENCE_POOLING = "pooler"   # SimCSE's pooler_output = tanh(W h_CLS + b), 768-d
DEFAULT_SENTENCE_ENCODER = "minilm"  # ours, offline: all-MiniLM-L6-v2 (PyPI), 384-d
DEFAULT_SENTENCE_POOLING = "mean"    # all-MiniLM-L6-v2's own pooling (1_Pooling/config.json)

# --- Input pipeline (mode_jax/data) --------------------------------------------
RRC_RATIO = (3 / 4, 4 / 3)    # RandomResizedCrop aspect range: torchvision default, kept by OpenCLIP/MetaCLIP

# --- Attention kernels (mode_jax/models/transformer.py resolve_attention) ------
# cuDNN flash attention takes bf16/fp16 heads up to 128 wide (256 from Hopper),
# multiples of 8: jax/_src/cudnn/fused_attention_stablehlo.py check_is_flash_attention.
CUDNN_MAX_HEAD_DIM = 128      # the pre-Hopper limit, so "auto" never picks a shape cuDNN rejects
CUDNN_HEAD_DIM_MULTIPLE = 8
# The Pallas TPU flash kernel tiles tokens in blocks of 128 that must divide the
# sequence: jax/experimental/pallas/ops/tpu/flash_attention.py BlockSizes.get_default.
TPU_FLASH_BLOCK = 128
