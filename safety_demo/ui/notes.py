"""Short teaching notes: what each view shows and how to read it."""

INTRO = """# safety_demo — how safety-steering decoding changes what a VLM says, token by token
Upload an image and a prompt. The model answers three ways **side by side**: **Vanilla** (the model alone),
**SafeCoDe** (a judge + contrast with a noised image for the first tokens) and **SafeSteer** (a safety probe
reranks the first tokens; MSAV nudges the prompt's hidden state). The views below explain why the answers differ."""

BUILTIN_NOTE = """**Built-in model (CPU, offline):** a small *pipeline* stand-in, not a real VLM. Real parts:
Qwen2.5-Coder-0.5B-Instruct (language model, with real safety alignment), EfficientNet-Lite0 (ImageNet recogniser) and
RapidOCR (text in the image). The image reaches the language model as visual embeddings (class-name soft tokens + OCR text).
Pick a preset to run a real VLM on a GPU."""

DELTA = """**Contrastive delta.** For each answer token: log p(token | real image) − log p(token | noised image).
Above zero, the *content* of the image pushed the model towards this token; near zero, the image did not matter.
SafeCoDe subtracts α × the noised-image logits, so tokens driven by what the image actually says are the ones it keeps.
Hover a bar to see the tokens whose probability moved most."""

INSPECTOR = """**Step inspector.** Pick a method and a step. The bars show, for the top candidates at that step, the model's own
probability (vanilla) and the method's adjusted probability; for SafeSteer, the probe's P(harmful) of each candidate's
hidden state. The action says what the method did: *kept*, *suppressed* / *boosted* (refusal tokens), *forced* (a refusal
opening), *reranked* (the candidate with the highest harmful score won: the paper's eq. (6), because while decoding the
probe is meant to score refusals higher; on the built-in model that premise does not hold, see docs/RESULTS.md)."""

MAP = """**Hidden-state map.** Each dot is a calibration request's last-prompt hidden state h₀, coloured harmful / harmless,
shaped by how the request was composed (text-only, typographic, photo). The ★ is this prompt's h₀;
◆ is h̄₀ after MSAV (if it fired). The numbered lines follow each answer's first tokens (the ones the methods steer);
tick *Every step* for the whole answer.
**Probe axis** (the default) puts the probe's own score on x: right of the dashed line the probe reads harm, so the
★ sits exactly where the probe's decision does. The y axis is the main direction of everything else, which is mostly
*how* a request was composed. The top two PCs of h₀ separate the compositions, not harm: PCA, t-SNE and UMAP show that
structure (t-SNE and UMAP keep neighbourhoods but distort distances; UMAP compiles on first use)."""

BRANCH = """**Branch from this step.** Click any token of an answer (or pick a method and a step above), choose another
candidate, and the same method decodes the rest from there, beside the original. It goes on from the run's kept
KV cache: no new prefill, and SafeCoDe keeps its verdict and its noised row. Keeping the method's own token gives the
same answer back."""

COMPOSER = """Type a request. The composer renders it three ways with the project's own renderers: as **text** with a blank
image, its **key phrase typed into the image** (with a neutral instruction), and as a **FigStep-style** title over an
empty numbered list (with FigStep's prompt). One method answers all three in one batch. The papers' core finding: a
model that refuses the text form often answers the image forms; switch the method to see what each defence does to each form."""
