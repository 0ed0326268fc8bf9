"""Named selections, as plain data: which keys, tables or collections a preset keeps.

Looked up by store kind and name (``get("redis", "openim")``). A preset only ever drops
what its comment proves is rebuilt or transient; anything it does not name is copied,
so a key that a newer OpenIM adds is kept rather than silently lost.
"""

from __future__ import annotations

from migrator.errors import PlanError
from migrator.stores.base import Selection

# OpenIM v3.x Redis (openim-data-layout.md §2.2, §1.4, §8.4). Patterns are globs on key names.
OPENIM_REDIS_KEEP: tuple[str, ...] = (
    "UID_PID_TOKEN_STATUS:*",  # token → state; losing it logs every user out
    "CHAT_UID_TOKEN_STATUS:*",  # chat service tokens, same role
    "FCM_TOKEN:*",  # push tokens live only in Redis
    "USER_BADGE_UNREAD_COUNT_SUM:*",  # iOS badge counter, no TTL, only in Redis
    "SEQ_USER_READ:*",  # read progress is written to Redis first; can be newer than Mongo
    "MALLOC_SEQ:*",  # seq allocation window; losing it leaves seq gaps
    "MAX_SEQ:*",  # ≤3.7: Redis was the source of truth for seqs (no TTL)
    "MIN_SEQ:*",
    "CON_USER_MIN_SEQ:*",
    "HAS_READ_SEQ:*",
)

OPENIM_REDIS_DROP: tuple[str, ...] = (
    # Message caches: rebuilt from MongoDB. Safe once msgtransfer drained its topics
    # (the cutover freeze waits for consumer lag 0 before the final copy).
    "MSG_CACHE:*",
    "MESSAGE_CACHE:*",  # ≤3.7 name of the same cache
    # Seq caches in front of MongoDB's seq / seq_user (rockscache, 1 h / 7 d).
    "MALLOC_MIN_SEQ:*",
    "SEQ_USER_MAX:*",
    "SEQ_USER_MIN:*",
    # Transient flags and presence: meaningless on another cluster.
    "SEND_MSG_FAILED_FLAG:*",  # 24 h marker of a failed send
    "ONLINE:*",  # online platforms, 30 min, re-announced by the gateways
    "GETUI_TOKEN",  # push provider's auth token, fetched again on demand
    "GETUI_TASK_ID",
    "EX_LOCK:*",  # ≤3.7 short-lived locks
    # User / group / friend / conversation caches (rockscache, 12 h): MongoDB holds the data.
    "USER_INFO:*",
    "USER_GLOBAL_RECV_MSG_OPT_KEY:*",
    "GROUP_INFO:*",
    "GROUP_MEMBER_IDS:*",
    "GROUP_MEMBERS_HASH2:*",
    "GROUP_MEMBER_INFO:*",
    "JOIN_GROUPS_KEY:*",
    "GROUP_MEMBER_NUM_CACHE:*",
    "GROUP_ROLE_LEVEL_MEMBER_IDS:*",
    "GROUP_MEMBER_MAX_VERSION:*",
    "GROUP_JOIN_MAX_VERSION:*",
    "FRIEND_IDS:*",
    "COMMON_FRIENDS_IDS:*",
    "FRIEND_INFO:*",
    "FRIEND_MAX_VERSION:*",
    "BLACK_IDS:*",
    "CONVERSATION:*",
    "CONVERSATION_IDS:*",
    "CONVERSATION_IDS_HASH:*",
    "NOT_NOTIFY_CONVERSATION_IDS:*",
    "PINNED_CONVERSATION_IDS:*",
    "RECV_MSG_OPT:*",
    "SUPER_GROUP_RECV_MSG_NOT_NOTIFY_USER_IDS:*",
    "SUPER_GROUP_RECV_MSG_NOT_NOTIFY_USER_IDS_HASH:*",
    "CONVERSATION_NOT_RECEIVE_MESSAGE_USER_IDS:*",
    "CONVERSATION_USER_MAX:*",
    "CONVERSATION_HAS_READ_SEQ:*",  # cache of seq_user.read_seq; SEQ_USER_READ is kept
    # Object-storage metadata caches (12 h / 7 d): the bucket and MongoDB hold the data.
    "OBJECT:*",
    "S3:*",
    "MINIO:IMAGE:*",
    "MINIO:THUMBNAIL:*",
)

OPENIM_REDIS = Selection(exclude=OPENIM_REDIS_DROP, preset="openim")

PRESETS: dict[tuple[str, str], Selection] = {
    ("redis", "openim"): OPENIM_REDIS,
}

# Keys a preset must never drop, checked by tests against the drop patterns.
MUST_KEEP: dict[tuple[str, str], tuple[str, ...]] = {
    ("redis", "openim"): OPENIM_REDIS_KEEP,
}


def get(kind: str, name: str) -> Selection:
    """The preset ``name`` for store ``kind``; a PlanError names an unknown one."""
    try:
        return PRESETS[(kind, name)]
    except KeyError:
        known = sorted(n for k, n in PRESETS if k == kind)
        raise PlanError(f"{kind}.selection.preset", f"unknown preset '{name}'",
                        hint=f"known for {kind}: {', '.join(known) or 'none'}") from None


def merged(kind: str, selection: Selection) -> Selection:
    """``selection`` with its named preset's patterns added (user patterns first)."""
    if not selection.preset:
        return selection
    preset = get(kind, selection.preset)
    include = tuple(dict.fromkeys(selection.include + preset.include))
    exclude = tuple(dict.fromkeys(selection.exclude + preset.exclude))
    return Selection(include=include, exclude=exclude, preset=selection.preset,
                     options={**preset.options, **selection.options})
