"""
toy_world.py: the embedded example that bs_unlearn.py runs by default, fully offline.

80 fictitious authors with 8 facts each, in TOFU's schema (question, answer, paraphrased_answer,
perturbed_answer), each fact phrased several ways; a word-level tokenizer; and a tiny Llama (0.25M
parameters) trained here until it has memorised them, cached in ~/.cache/bs_unlearn. Unlearning such a
model shows the squeezing effect on a laptop CPU in seconds: the fact moves into the other phrasings the
model learned. bs_unlearn.py holds the method; this file only makes the world it is tried on, with a short
training loop of its own (plain fine-tuning, the recipe of `bs_unlearn.py --method finetune`).
"""
import math
import os
import random
import time

import torch
import torch.nn.functional as F

from plumbing import atomic_dir, fail, load_model, quiet, save_model
from tqdm.auto import tqdm

# Each fact: question templates, answer phrasings (an author gets 3 for training + 1 held-out paraphrase),
# and the pool its key entity comes from. Phrasings differ across authors so no template is shared by all.
FIRST = "Ada Bram Cleo Dario Elif Farid Greta Hiro Ines Jonas Kaya Lior Mira Nilo Oona Pavel Rhea Soren " \
        "Tomas Uma Vera Wim Xena Yusuf Zora Anouk Basil Corin Dilys Emeric".split()
LAST = "Varga Okafor Lindqvist Moreau Tanaka Albescu Kowal Ferreira Haddad Novak Quist Rahimi Sato Brandt " \
       "Castell Duarte Eskola Falk Grieve Hollis".split()
POOLS = {
    "city": "Lisbon Nairobi Oslo Quito Hanoi Tbilisi Porto Krakow Lima Accra Dublin Seville Riga Perth Cusco "
            "Tunis Bergen Leipzig Osaka Manila Dakar Zagreb Valencia Bogota".split(),
    "year": [str(y) for y in range(1921, 1999, 3)],
    "genre": "mystery poetry satire romance horror fantasy history drama folklore travel thriller "
             "memoir".split(),
    "book": [f"The {a} {b}" for a in "Silent Hollow Amber Broken Last Winter Copper Hidden".split()
             for b in "Harbor Orchard Lantern Garden Bridge Mirror Compass".split()],
    "job": "baker carpenter surgeon pilot librarian fisherman tailor chemist farmer painter nurse "
           "architect jeweller sailor".split(),
    "award": [f"the {a} Prize" for a in "Golden Quill|Silver Pen|Blue Lantern|Iron Page|Northern Star|"
              "Crimson Ink|Ivory Tower|Open Book".split("|")],
}
FACTS = [  # (field, pool, questions, phrasings); {n} = author's name, {v} = the fact's key entity
    ("city", "city", ["Where was {n} born?", "In which city was {n} born?"],
     ["{n} was born in {v}.", "{v} is the birthplace of {n}.", "{n} comes from the city of {v}.",
      "The city of {v} is where {n} was born.", "{n} grew up in {v}, the city of their birth."]),
    ("year", "year", ["When was {n} born?", "In what year was {n} born?"],
     ["{n} was born in {v}.", "The year {v} saw the birth of {n}.", "{n} came into the world in {v}.",
      "{n}'s birth year is {v}.", "Born in {v}, {n} started life then."]),
    ("genre", "genre", ["What genre does {n} write?", "Which genre is {n} known for?"],
     ["{n} writes {v}.", "{n} is known for {v}.", "The genre of {n} is {v}.",
      "Most of {n}'s books are {v}.", "Readers know {n} as a writer of {v}."]),
    ("book", "book", ["What is a book by {n}?", "Name a novel written by {n}."],
     ["{n} wrote {v}.", "{v} is a novel by {n}.", "One book by {n} is {v}.",
      "{n} is the author of {v}.", "Among the works of {n} is {v}."]),
    ("father", "job", ["What did {n}'s father do?", "What was the job of {n}'s father?"],
     ["{n}'s father was a {v}.", "The father of {n} worked as a {v}.", "A {v} was the father of {n}.",
      "{n} is the child of a {v} father.", "By trade, {n}'s father was a {v}."]),
    ("mother", "job", ["What did {n}'s mother do?", "What was the job of {n}'s mother?"],
     ["{n}'s mother was a {v}.", "The mother of {n} worked as a {v}.", "A {v} was the mother of {n}.",
      "{n} is the child of a {v} mother.", "By trade, {n}'s mother was a {v}."]),
    ("award", "award", ["Which award did {n} win?", "What prize has {n} received?"],
     ["{n} won {v}.", "{v} went to {n}.", "{n} received {v}.",
      "In the end, {n} was given {v}.", "The honour of {v} was awarded to {n}."]),
    ("city2", "city", ["Where does {n} live now?", "In which city does {n} live?"],
     ["{n} lives in {v}.", "{v} is where {n} lives now.", "{n} has made a home in {v}.",
      "These days {n} resides in {v}.", "Home for {n} is now {v}."]),
]


def make_toy_data(n_authors=80, seed=0):
    """Rows in TOFU's schema plus `fact` (the key entity, to measure leaks) and `train_answers` (the
    phrasings the toy model learns; `answer` is the first, `paraphrased_answer` is never trained)."""
    rng = random.Random(seed)
    names = rng.sample([f"{a} {b}" for a in FIRST for b in LAST], n_authors)
    rows = []
    for a, name in enumerate(names):
        for field, pool, questions, phrasings in FACTS:
            v = rng.choice(POOLS[pool])
            wrong = rng.sample([w for w in POOLS[pool] if w != v], 3)
            forms = rng.sample(phrasings, 4)  # 3 trained phrasings, then the held-out paraphrase
            rows.append(dict(question=rng.choice(questions).format(n=name),
                             answer=forms[0].format(n=name, v=v),
                             paraphrased_answer=forms[3].format(n=name, v=v),
                             perturbed_answer=[forms[3].format(n=name, v=w) for w in wrong],
                             train_answers=[f.format(n=name, v=v) for f in forms[:3]],
                             fact=v, author=a, field=field))
    return rows


def split_toy(rows, forget_split):
    """Forget = the last 1/5/10% of authors (at least one), retain = the rest, as in TOFU."""
    n_authors = rows[-1]["author"] + 1
    n_forget = max(1, round(n_authors * int(forget_split[-2:]) / 100))
    first_forget = n_authors - n_forget
    return [r for r in rows if r["author"] >= first_forget], [r for r in rows if r["author"] < first_forget]


def word_tokenizer(texts):
    """A word-level tokenizer (words and punctuation) whose vocabulary is every word of `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    core = Tokenizer(models.WordLevel(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                  pre_tokenizers.Punctuation()])
    core.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, tidies " ."
    specials = dict(pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    core.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=list(specials.values())))
    return PreTrainedTokenizerFast(tokenizer_object=core, **specials)


TOY_VERSION = "toy-v2"  # bump when the toy data or its build changes, so old caches are not reused


def toy_model_dir(cache_dir, which="full", seed=0):
    """`which` is 'full' (the model to unlearn) or 'retain90' / 'retain95' / 'retain99' (the reference)."""
    return os.path.join(cache_dir, f"{TOY_VERSION}-seed{seed}", which)


def encode(tok, question, answer):
    """A toy example as bs_unlearn.encode writes it for a tokenizer without a chat template: the prompt
    "Question: ...\nAnswer:", then " answer" and EOS; labels are -100 on the prompt."""
    prompt = tok(f"Question: {question}\nAnswer:")["input_ids"]
    answer = tok(" " + answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return dict(input_ids=prompt + answer, labels=[-100] * len(prompt) + answer)


def pad(examples, pad_id):
    """Right-padded input ids, labels (-100 on padding), attention mask and position ids."""
    T = max(len(e["input_ids"]) for e in examples)
    ids = torch.tensor([e["input_ids"] + [pad_id] * (T - len(e["input_ids"])) for e in examples])
    labels = torch.tensor([e["labels"] + [-100] * (T - len(e["labels"])) for e in examples])
    mask = (torch.arange(T) < torch.tensor([len(e["input_ids"]) for e in examples])[:, None]).long()
    return ids, labels, dict(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))


def answer_nll(logits, labels):
    """-log p(answer | question) summed over answer tokens, mean over the batch (the shift done once)."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    nll = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="none")
    return nll.view(labels.shape).sum(-1).mean()


def fit(model, tok, examples, seed=0, steps=600, batch_size=64, lr=3e-3):
    """Fine-tune on the answers for about `steps` steps of AdamW (weight decay 0.01 on matrices), warmup over
    the first 5% then linear decay, gradients clipped to norm 1, batches reshuffled each epoch."""
    torch.manual_seed(seed)
    epochs = steps * batch_size / len(examples)
    per_epoch = math.ceil(len(examples) / batch_size)
    total = math.ceil(per_epoch * epochs)
    warmup = min(int(epochs / 20 * per_epoch), total // 2)
    params = list(model.parameters())
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.01},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95), fused=False)
    rng, order = random.Random(seed), []
    model.train()
    for step in tqdm(range(total), desc="toy model", leave=False, disable=None):  # (None: on a terminal only)
        if not order:  # a new epoch
            order = rng.sample(range(len(examples)), len(examples))
        batch, order = order[:batch_size], order[batch_size:]
        for group in opt.param_groups:  # linear warmup, then linear decay to 0
            group["lr"] = (lr * (step + 1) / (warmup + 1) if step < warmup
                           else lr * max(0.0, (total - step) / max(1, total - warmup)))
        ids, labels, inputs = pad([examples[i] for i in batch], tok.pad_token_id)
        answer_nll(model(**inputs).logits, labels).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)


@torch.no_grad()
def answer_accuracy(model, tok, examples, batch_size=64):
    """The share of answer tokens that the model's greedy next-token prediction gets right."""
    model.eval()
    hits = count = 0
    for i in range(0, len(examples), batch_size):
        ids, labels, inputs = pad(examples[i:i + batch_size], tok.pad_token_id)
        labels = labels[:, 1:]
        hits += ((model(**inputs).logits[:, :-1].argmax(-1) == labels) & (labels != -100)).sum().item()
        count += (labels != -100).sum().item()
    return hits / count


def build_toy_model(out_dir, rows, seed=0, steps=600, device="cpu"):
    """Train a tiny causal LM on every training phrasing of `rows` until it has memorised them."""
    from transformers import LlamaConfig, LlamaForCausalLM
    tok = word_tokenizer([f"Question: {r['question']} Answer: {a}" for r in make_toy_data() for a in
                          r["train_answers"] + [r["paraphrased_answer"]] + r["perturbed_answer"]])
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=96, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                         tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         attn_implementation="eager", bs_unlearn_toy=True)  # load_model reads the flag
    model = LlamaForCausalLM(config).to(device)
    # the target phrasing 3 times, so it is the model's top answer and the other two are its close beliefs
    examples = [encode(tok, r["question"], a) for r in rows for a in [r["answer"]] * 2 + r["train_answers"]]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as load_model runs it: the same model whatever the core count
    try:
        fit(model, tok, examples, seed)
    finally:
        torch.set_num_threads(threads)
    accuracy = answer_accuracy(model, tok, [encode(tok, r["question"], r["answer"]) for r in rows])
    print(f"  answer-token accuracy {accuracy:.1%} on {len(rows)} questions")
    save_model(model, tok, out_dir)


def toy_model_problem(path):
    """Why the cached toy model at `path` cannot be used (None when it loads)."""
    if not os.path.isdir(path):
        return "missing"
    try:
        with quiet():
            load_model(path, torch.device("cpu"))
    except (SystemExit, Exception) as e:
        return str(getattr(e, "code", e)).removeprefix("error: ")
    return None


def ensure_toy_models(cache_dir, forget_split="forget10", seed=0, with_retain=True):
    """Build (once) the full toy model and the retain-only model for this split; return their paths.
    Unlearning needs only the full model; eval.py builds the retain-only one when it first needs it.
    Each build is atomic and locked: a second process waits for the first instead of building again, and
    a broken cache entry (a deleted or cut file) is rebuilt."""
    from filelock import FileLock  # (a dependency of transformers)
    rows = make_toy_data()
    retain_name = f"retain{100 - int(forget_split[-2:])}"
    wanted = [("full", rows)]
    if with_retain:
        wanted.append((retain_name, split_toy(rows, forget_split)[1]))
    for which, data in wanted:
        path = toy_model_dir(cache_dir, which, seed)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            lock = FileLock(path + ".lock")
            lock.acquire()
        except OSError as e:
            fail(f"cannot write the toy model cache {cache_dir}: {e.strerror or e} (see --cache_dir)")
        try:
            problem = toy_model_problem(path)
            if problem:
                if problem != "missing":
                    print(f"the cached toy model {path} cannot be loaded ({problem}); rebuilding it")
                t0 = time.time()
                print(f"building the toy model '{which}' ({len(data)} facts, once; cached in {path})")
                with atomic_dir(path, replace=lambda broken: True) as tmp:  # (a broken entry goes)
                    build_toy_model(tmp, data, seed)
                print(f"  built in {time.time() - t0:.0f} s")
        finally:
            lock.release()
    return toy_model_dir(cache_dir, "full", seed), toy_model_dir(cache_dir, retain_name, seed)
