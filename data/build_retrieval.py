"""Rebuild data/retrieval.tsv, chapter 06's retrieval set with hard negatives, byte for byte.

Every word list below was written by hand for the course (December 2026). Each *event* is
"the <agent> <verb> the <patient> <when>"; for each event the file holds the query, one paraphrase
(the same event in other words: the passive voice, or a synonym of the verb with the time phrase
moved to the front), three hard negatives that share almost every word with the query but not its
meaning (the verb negated, and two of three one-word changes in rotation: another person, another
verb, another time) and a role-swapped probe (kept out of the retrieval pool: course_lib.retrieval).
The grade of each sentence against its query (5 paraphrase, 3 another time, 2 another person or
verb, 1 negated or roles swapped) is assigned by this rule, not by human raters.

Run: python data/build_retrieval.py  (writes data/retrieval.tsv next to this file)
"""
import random
from pathlib import Path

SEED = 20261207
N_EVENTS = 180
PEOPLE = ["teacher", "student", "doctor", "nurse", "pilot", "farmer", "baker", "lawyer", "judge", "driver",
          "chef", "waiter", "manager", "intern", "coach", "player", "singer", "painter", "soldier", "captain",
          "banker", "clerk", "tourist", "guide", "mayor", "reporter", "editor", "author", "landlord", "tenant",
          "neighbour", "grandmother", "boy", "girl", "plumber", "engineer", "scientist", "priest", "guard", "thief"]
# (past, base, past participle, a synonym in the past tense)
VERBS = [("thanked", "thank", "thanked", "expressed gratitude to"), ("praised", "praise", "praised", "complimented"),
         ("criticised", "criticise", "criticised", "found fault with"), ("helped", "help", "helped", "assisted"),
         ("called", "call", "called", "phoned"), ("visited", "visit", "visited", "went to see"),
         ("hired", "hire", "hired", "took on"), ("fired", "fire", "fired", "dismissed"),
         ("followed", "follow", "followed", "trailed"), ("blamed", "blame", "blamed", "laid the blame on"),
         ("warned", "warn", "warned", "cautioned"), ("invited", "invite", "invited", "asked over"),
         ("ignored", "ignore", "ignored", "paid no attention to"), ("hugged", "hug", "hugged", "embraced"),
         ("pushed", "push", "pushed", "shoved"), ("paid", "pay", "paid", "gave money to"),
         ("taught", "teach", "taught", "gave lessons to"), ("interviewed", "interview", "interviewed", "questioned"),
         ("rescued", "rescue", "rescued", "saved"), ("insulted", "insult", "insulted", "offended"),
         ("trusted", "trust", "trusted", "relied on"), ("forgave", "forgive", "forgiven", "pardoned"),
         ("defeated", "defeat", "defeated", "beat"), ("greeted", "greet", "greeted", "welcomed"),
         ("sued", "sue", "sued", "took legal action against"), ("photographed", "photograph", "photographed", "took a picture of"),
         ("married", "marry", "married", "wed"), ("chased", "chase", "chased", "ran after"),
         ("recognised", "recognise", "recognised", "knew"), ("betrayed", "betray", "betrayed", "double-crossed"),
         ("outran", "outrun", "outrun", "ran faster than"), ("kissed", "kiss", "kissed", "gave a kiss to"),
         ("emailed", "email", "emailed", "sent an email to"), ("hit", "hit", "hit", "struck"),
         ("robbed", "rob", "robbed", "stole from"), ("fed", "feed", "fed", "gave food to"),
         ("examined", "examine", "examined", "checked"), ("promoted", "promote", "promoted", "gave a promotion to"),
         ("scolded", "scold", "scolded", "told off"), ("comforted", "comfort", "comforted", "consoled")]
WHEN = ["after the concert", "before breakfast", "at the station", "during the storm", "on Monday morning",
        "in the hospital", "at the wedding", "after the match", "in the kitchen", "during the meeting",
        "at the airport", "last winter", "on the bus", "at midnight", "in the library", "before the trial",
        "after lunch", "at the market", "during the holiday", "in the garden", "on the first day", "at the party",
        "after the exam", "in the rain", "at the border", "during the interview", "on the beach", "in the office"]


GRADES = {"time": 3, "person": 2, "verb": 2}


def cap(s):
    return s[0].upper() + s[1:]


def build():
    rng = random.Random(SEED)
    rows, seen, used = [], set(), set()
    while len(seen) < N_EVENTS:
        a, b, c = rng.sample(PEOPLE, 3)
        v, v2 = rng.sample(range(len(VERBS)), 2)
        w, w2 = rng.sample(WHEN, 2)
        if (a, b, v) in seen or (b, a, v) in seen:
            continue
        q = len(seen)
        past, base, pp, syn = VERBS[v]
        query = f"The {a} {past} the {b} {w}."
        if q % 2 == 0:
            para = f"The {b} was {pp} by the {a} {w}."
        else:
            para = f"{cap(w)}, the {a} {syn} the {b}."
        changed = {"person": f"The {a} {past} the {c} {w}.",
                   "verb": f"The {a} {VERBS[v2][0]} the {b} {w}.",
                   "time": f"The {a} {past} the {b} {w2}."}
        skip = list(changed)[q % 3]  # two of the three one-word changes, in rotation
        event = [(q, "query", "query", 5, query), (q, "positive", "paraphrase", 5, para),
                 (q, "negative", "negation", 1, f"The {a} did not {base} the {b} {w}.")]
        event += [(q, "negative", k, GRADES[k], t) for k, t in changed.items() if k != skip]
        event.append((q, "probe", "swap", 1, f"The {b} {past} the {a} {w}."))
        if any(r[-1] in used for r in event):  # every sentence of the file appears once
            continue
        seen.add((a, b, v))
        used.update(r[-1] for r in event)
        rows += event
    lines = ["query\trole\tkind\tgrade\ttext"] + ["\t".join(map(str, r)) for r in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    Path(__file__).with_name("retrieval.tsv").write_text(build(), encoding="utf-8")
