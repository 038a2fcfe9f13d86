"""Open-Assistant message trees as chats, for `data.transform`.

An Open-Assistant trees file (`*.trees.jsonl`, as OA exports it and as the oasst1/oasst2 releases ship it) holds one
tree a line: `{"message_tree_id", "prompt": {"role": "prompter", "text", "replies": [...]}}`, each reply a message
with its own replies (`flat_to_trees.py` makes one of a flat table, one message a row, as the hub's parquet
files give them). A record is a whole tree, so these functions return a list of rows, one chat each:

- `threads`: every path from the root prompt to a leaf, as one chat, every answer of it trained on (a path that
  ends with an unanswered prompt ends at the answer before it, and is left out where another chat goes on from
  that answer: it would train that answer twice);
- `replies`: every assistant message with the conversation before it, only that last answer trained on (the
  answers before it have weight 0).

Messages marked deleted or failed in review (`review_result: false`) are left out with their replies; set
`HUMAN_ONLY = True` to leave out the synthetic ones (`synthetic: true`) too. A message without `role` or `text`
stops the run naming its place in the tree (`prompt.replies[1].replies[0]`).
"""

HUMAN_ONLY = False
ROLES = {"prompter": "user", "assistant": "assistant"}


def _turn(node: dict, where: str) -> dict | None:
    """The message as a chat turn, or None where it is left out (with its replies)."""
    if not isinstance(node, dict):
        raise ValueError(f"{where}: a message must be an object, got {type(node).__name__}")
    if node.get("deleted") or node.get("review_result") is False or (HUMAN_ONLY and node.get("synthetic")):
        return None
    for field in ("role", "text"):
        if field not in node:
            raise ValueError(f"{where}: the message has no field '{field}'")
    if node["role"] not in ROLES:
        raise ValueError(
            f"{where}.role is {node['role']!r}; an Open-Assistant message is a prompter's or an assistant's"
        )
    return {"role": ROLES[node["role"]], "content": node["text"]}


def _paths(node: dict, where: str, before: list[dict]):
    """Each (path to a leaf, the turns of it) below `node`, depth first, the replies in their order."""
    turn = _turn(node, where)
    if turn is None:
        return
    path = before + [turn]
    replies = node.get("replies") or []
    kept = False
    for k, reply in enumerate(replies):
        for found in _paths(reply, f"{where}.replies[{k}]", path):
            kept = True
            yield found
    if not kept:
        yield path


def _root(row: dict) -> dict:
    if "prompt" not in row:
        raise ValueError(f"the row has no field 'prompt' (it has {', '.join(row) or 'none'}); is it an OA trees file?")
    return row["prompt"]


def threads(row: dict) -> list[dict]:
    """Every root-to-leaf path of the tree as one chat ({"messages": [...]}), each ending with an answer. A path
    that ends with an unanswered prompt ends at the answer before it, unless another chat goes on from there."""
    ends = []
    for path in _paths(_root(row), "prompt", []):
        while path and path[-1]["role"] != "assistant":
            path = path[:-1]
        if path:
            ends.append(tuple((t["role"], t["content"]) for t in path))
    unique = list(dict.fromkeys(ends))
    longer = {key[:n] for key in unique for n in range(1, len(key))}  # the proper prefixes of every chat
    return [{"messages": [{"role": r, "content": c} for r, c in key]} for key in unique if key not in longer]


def replies(row: dict) -> list[dict]:
    """Every assistant message of the tree with the conversation before it; only that answer is trained on."""
    chats, seen = [], set()
    for path in _paths(_root(row), "prompt", []):
        for end, turn in enumerate(path):
            key = tuple((t["role"], t["content"]) for t in path[: end + 1])
            if turn["role"] != "assistant" or key in seen:
                continue
            seen.add(key)
            earlier = [t | {"weight": 0} if t["role"] == "assistant" else t for t in path[:end]]
            chats.append({"messages": earlier + [turn]})
    return chats
