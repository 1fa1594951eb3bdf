"""Post-training: what turns a model that continues text into one that answers, and the tools around it.

Its place in the house: a layer beside the core (gpt/), which it imports and which never imports it. It adds:

    chat.py            the chat template: conversations as token ids, and where an answer ends
    chat_data.py       conversations as training data (instruction tuning)
    dpo.py             preference pairs as training data, and the DPO loss against a frozen reference
    rl.py              reinforcement learning from checkable answers (train.py --rl): sample, reward, reinforce
    lora.py            LoRA: the adapted layers' math;  adapters.py: attach/merge/switch off;
    adapter_files.py   adapters in checkpoints and finding their base;  export.py: python -m gpt.lora
    tasks/             the task suite: tasks, preference pairs on them, scoring, python -m gpt.tasks

`register` is announced in pyproject.toml (entry point group "gpt.layers"): the core calls it the first time
it asks for a kind of training data, an adapter or an on-load hook (gpt/layers.py).
"""


def register() -> None:
    from gpt import layers
    from gpt.post.adapter_files import LORA
    from gpt.post.chat import give_template
    from gpt.post.chat_data import CONVERSATIONS
    from gpt.post.dpo import PAIRS
    from gpt.post.rl import PROMPTS

    layers.add_data_kind(PROMPTS)  # chosen by rl = true, never by a line's keys
    layers.add_data_kind(PAIRS)  # first: a pair's line may also hold the keys of a conversation
    layers.add_data_kind(CONVERSATIONS)
    layers.add_adaptation(LORA)
    layers.add_on_load(give_template)
