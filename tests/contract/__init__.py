"""Contract tests: every adapter of a port passes the same tests (fixtures in conftest.py).

Shared test data lives here so that every suite attacks owner isolation the same way.
"""

#: Owner ids that would widen a filter if an adapter pasted them into a query language:
#: Milvus expressions, SQL, OpenSearch query strings, wildcards, line breaks, long and unicode.
HOSTILE_OWNERS = (
    'a" || owner != "',
    'x\\" or 1==1 or \\"',
    "' OR 1=1 --",
    "*",
    "ünïcødé",
    "o" * 300,
    "line\nbreak",
    "back\\slash\\",
    "{owner}",
)

#: A key as users write them: folders, spaces, '+', an apostrophe and accents, kept verbatim.
AWKWARD_KEY = "users/ann/red flower+1 l'été.jpg"
