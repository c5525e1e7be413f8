"""Deterministic text generators: the world the course's model lives in.

Everything the bundled model ever read, and every dataset of the course, comes from here:

* general simple text (short stories, facts about animals and places), and
* domain documents (mortgage applications, pay slips, bank statements, loan memos, receipts)
  whose fields are restated later in the same document, so that copying pays in pretraining,
* copy drills (ledgers read back, lists repeated) that grow the copying circuit early.

Every generator takes a ``random.Random`` so that a seed gives the same text on any machine.
The bundled model was pretrained on exactly this text (``scripts/pretrain_base.py``): changing a
generator that ``pretraining_document`` uses means retraining the model, and
``tests/test_pretrain_script.py`` fails until then. New generators can be added freely.
No instruction format appears in the pretraining corpus: the model learns *what* documents look
like, and supervised fine-tuning later teaches it to *answer*.
"""

from __future__ import annotations

import json
import random
import re

FIRST_NAMES = """Linda James Maria Robert Sofia David Aisha Omar Chen Priya Lucas Emma Noah Olivia Liam Ava
Ethan Mia Mason Zoe Logan Ella Owen Grace Caleb Lily Ryan Chloe Nathan Hannah Isaac Leah Adam Nora Ben Ruby
Daniel Clara Felix Iris Hugo Jade Ivan Kira Jonah Lena Kofi Mara Luis Nina Marco Olga Nikhil Paula Oscar
Rosa Pablo Sara Quinn Tara Rafael Uma Samuel Vera Tomas Wendy Victor Yara Walter Zara Xavier Alma Yusuf
Bella Diego Carmen Elias Dana Farah Erik Gina Frank Helen George Ines Henry Julia Ibrahim Karen Jorge Lucy
Kevin Megan Leon Naomi Martin Petra Mateo Rita Miguel Selma Peter Tina Raj Ursula Simon Valerie Theo Wanda
Ali Amy Ray Kim Eva Tom Ana Max Joy Sam""".split()

LAST_NAMES = """Garcia Smith Johnson Brown Lee Patel Kim Nguyen Martin Lopez Wilson Clark Lewis Walker Hall
Young Allen King Wright Scott Green Baker Adams Nelson Hill Campbell Mitchell Roberts Carter Phillips Evans
Turner Torres Parker Collins Edwards Stewart Morris Murphy Cook Rogers Morgan Cooper Peterson Reed Bailey
Bell Gomez Kelly Howard Ward Cox Diaz Richardson Wood Watson Brooks Bennett Gray James Reyes Cruz Hughes
Price Myers Long Foster Sanders Ross Morales Powell Sullivan Russell Ortiz Jenkins Perry Butler Barnes
Fisher Henderson Coleman Simmons Patterson Jordan Reynolds Hamilton Graham Wallace Woods Cole West Owens
Marshall Ellis Ford Hunt Shaw Rice Stone Fox Rose Lane Park Dunn Moss Wade""".split()

EMPLOYERS = """Northwind Bakery|Blue River Logistics|Summit Health Clinic|Oak Street School|Harbor Freight Lines|
Greenfield Farms|Bright Path Software|Riverside Hospital|Maple Leaf Hotel|Cedar Grove Library|Atlas Builders|
Sunrise Dental|Pioneer Insurance|Silver Lake Foods|Redwood Energy|Golden Gate Printing|Lakeside Auto Repair|
City Water Works|Evergreen Pharmacy|Starlight Cinema|Iron Bridge Steel|Meadow Dairy|Coastal Airlines|
Hilltop Nursery|Union Rail|Copper Kettle Cafe|Westside Market|Pinecrest Bank|Orchard Valley Winery|
Lighthouse Media""".replace("\n", "").split("|")

CITIES = """Springfield Riverton Fairview Lakewood Milford Ashford Brookside Cedarville Dover Easton Franklin
Glendale Hampton Kingsport Lancaster Madison Newport Oakdale Preston Quincy Salem Trenton Union Vernon
Weston Yorktown Clayton Bristol Camden Marion""".split()

STREETS = """Oak Maple Pine Cedar Elm Birch Willow Lake Hill River Park Main Church Mill Spring Forest
Sunset Valley Meadow Highland""".split()

ITEMS = [("bread", 3, 6), ("milk", 2, 5), ("coffee", 4, 12), ("apples", 2, 8), ("rice", 3, 9),
         ("cheese", 4, 11), ("soap", 2, 7), ("a lamp", 15, 60), ("a chair", 25, 120), ("paint", 9, 40),
         ("a jacket", 30, 150), ("shoes", 35, 140), ("a book", 8, 30), ("tea", 3, 10), ("batteries", 4, 15)]

MERCHANTS = """Fresh Mart|Corner Grocer|Home Goods Depot|City Books|Green Leaf Pharmacy|Sun Cafe|Tech Point|
Fuel Stop|Pet World|Daily Deli|Garden Center|Shoe Palace""".replace("\n", "").split("|")

LOAN_PURPOSES = ["a home purchase", "a refinance", "a home renovation", "a car purchase", "debt consolidation"]
JOBS = ["nurse", "teacher", "driver", "baker", "engineer", "clerk", "electrician", "chef", "accountant",
        "mechanic", "designer", "pharmacist", "librarian", "pilot", "farmer"]
RISK_LEVELS = ["low", "medium", "high"]

ANIMALS = ["cat", "dog", "bird", "fox", "rabbit", "bear", "duck", "frog", "horse", "owl", "mouse", "turtle"]
COLORS = ["red", "blue", "green", "yellow", "small", "big", "little", "old", "shiny", "soft"]
PLACES = ["the park", "the river", "the forest", "the garden", "the beach", "the market", "the school",
          "the hill", "the farm", "the lake"]
OBJECTS = ["ball", "kite", "box", "book", "hat", "cake", "boat", "key", "map", "shell", "drum", "lamp"]
FEELINGS = ["happy", "sad", "tired", "brave", "curious", "proud", "scared", "excited", "calm"]


def money(x: int) -> str:
    """Format whole dollars the way every document of the course does: $4,200."""
    return f"${x:,}"


def person(rng: random.Random) -> dict:
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    return {"first": first, "last": last, "name": f"{first} {last}"}


def pick_risk(dti: float, credit: int) -> str:
    """The loan memo's rule: a clear, learnable function of the debt-to-income ratio and credit score."""
    if dti < 0.30 and credit >= 680:
        return "low"
    if dti > 0.43 or credit < 600:
        return "high"
    return "medium"


def applicant(rng: random.Random) -> dict:
    """A mortgage applicant: the entity behind applications, pay slips, memos and statements."""
    p = person(rng)
    income = rng.randrange(2500, 12001, 50)
    debts = rng.randrange(100, int(income * 0.6), 25)
    credit = rng.randrange(540, 821)
    dti = debts / income
    p.update(
        employer=rng.choice(EMPLOYERS), job=rng.choice(JOBS), city=rng.choice(CITIES),
        address=f"{rng.randrange(10, 990)} {rng.choice(STREETS)} Street",
        income=income, debts=debts, credit=credit, dti=dti, risk=pick_risk(dti, credit),
        loan=rng.randrange(80, 900) * 1000, purpose=rng.choice(LOAN_PURPOSES),
        years=rng.randrange(1, 25), account=str(rng.randrange(10**7, 10**8)),
    )
    return p


def record_line(fields: dict) -> str:
    """A JSON record, the machine-readable restatement some documents end with."""
    return "Record: " + json.dumps(fields)


# ----------------------------------------------------------------------------- domain documents

def mortgage_application(rng: random.Random, a: dict | None = None) -> tuple[str, dict]:
    a = a or applicant(rng)
    lines = [
        rng.choice(["MORTGAGE APPLICATION", "Mortgage application", "Home loan application"]),
        f"Applicant: {a['name']}",
        f"Address: {a['address']}, {a['city']}",
        f"Employer: {a['employer']}",
        f"Occupation: {a['job']}",
        f"Monthly income: {money(a['income'])}",
        f"Monthly debts: {money(a['debts'])}",
        f"Credit score: {a['credit']}",
        f"Loan amount: {money(a['loan'])}",
        f"Purpose: {a['purpose']}",
    ]
    body = lines[:1] + rng.sample(lines[1:], k=len(lines) - 1) if rng.random() < 0.3 else lines
    closing = rng.choice([
        f"Signed by {a['name']} in {a['city']}.",
        f"I, {a['name']}, confirm that the information above is true.",
        f"Applicant name: {a['name']}. Monthly income: {money(a['income'])}.",
        f"Summary: {a['name']} earns {money(a['income'])} a month and pays {money(a['debts'])} in debts.",
    ])
    text = "\n".join(body) + "\n" + closing
    if rng.random() < 0.5:
        text += "\n" + record_line({"name": a["name"], "income": money(a["income"]), "debts": money(a["debts"])})
    return text, a


def pay_slip(rng: random.Random, a: dict | None = None) -> tuple[str, dict]:
    a = a or applicant(rng)
    month = rng.choice(["January", "February", "March", "April", "May", "June", "July", "August",
                        "September", "October", "November", "December"])
    tax = int(a["income"] * rng.uniform(0.12, 0.3))
    net = a["income"] - tax
    text = "\n".join([
        f"PAY SLIP - {a['employer']}",
        f"Employee: {a['name']}",
        f"Position: {a['job']}",
        f"Period: {month} {rng.randrange(2019, 2026)}",
        f"Gross pay: {money(a['income'])}",
        f"Tax withheld: {money(tax)}",
        f"Net pay: {money(net)}",
        rng.choice([f"Pay to: {a['name']}, amount {money(net)}.",
                    f"Employee: {a['name']}. Net pay: {money(net)}.",
                    f"Paid to {a['name']} by {a['employer']}: {money(net)}."]),
    ])
    if rng.random() < 0.4:
        text += "\n" + record_line({"employee": a["name"], "employer": a["employer"], "net": money(net)})
    a = dict(a, net=net, tax=tax, month=month)
    return text, a


def bank_statement(rng: random.Random, a: dict | None = None) -> tuple[str, dict]:
    a = a or applicant(rng)
    balance = rng.randrange(200, 20000)
    rows = ["BANK STATEMENT - Pinecrest Bank", f"Account holder: {a['name']}",
            f"Account number: {a['account']}", f"Opening balance: {money(balance)}"]
    for _ in range(rng.randrange(2, 5)):
        if rng.random() < 0.35:
            amt = rng.randrange(300, 4000)
            balance += amt
            rows.append(f"Deposit from {a['employer']}: {money(amt)}")
        else:
            amt = rng.randrange(5, min(900, max(6, balance)))
            balance -= amt
            rows.append(f"Payment to {rng.choice(MERCHANTS)}: {money(amt)}")
    rows.append(f"Closing balance: {money(balance)}")
    rows.append(rng.choice([f"Account holder: {a['name']}. Closing balance: {money(balance)}.",
                            f"Statement for {a['name']}, account {a['account']}.",
                            f"Closing balance for {a['name']}: {money(balance)}."]))
    return "\n".join(rows), dict(a, balance=balance)


def loan_memo(rng: random.Random, a: dict | None = None) -> tuple[str, dict]:
    a = a or applicant(rng)
    pct = round(100 * a["dti"])
    reason = {
        "low": "The ratio is low and the credit history is good.",
        "medium": "The ratio is moderate, so the file needs a closer look.",
        "high": "The ratio is high or the credit score is weak.",
    }[a["risk"]]
    text = "\n".join([
        "LOAN OFFICER MEMO",
        f"Borrower: {a['name']}",
        f"Monthly income: {money(a['income'])}",
        f"Monthly debts: {money(a['debts'])}",
        f"Credit score: {a['credit']}",
        f"Debt-to-income ratio: {pct}%",
        f"Risk: {a['risk']}",
        reason,
        rng.choice([f"Borrower: {a['name']}. Risk: {a['risk']}.",
                    f"Prepared for {a['name']}.",
                    f"The file of {a['name']} is rated {a['risk']} risk."]),
    ])
    return text, a


def receipt(rng: random.Random) -> tuple[str, dict]:
    merchant = rng.choice(MERCHANTS)
    buyer = person(rng)
    items = rng.sample(ITEMS, k=rng.randrange(1, 4))
    rows = [f"RECEIPT - {merchant}", f"Customer: {buyer['name']}"]
    total = 0
    for name, lo, hi in items:
        price = rng.randrange(lo, hi + 1)
        total += price
        rows.append(f"{name}: {money(price)}")
    rows.append(f"Total: {money(total)}")
    rows.append(rng.choice([f"Customer: {buyer['name']}. Total: {money(total)}.",
                            f"Thank you, {buyer['name']}! You paid {money(total)} at {merchant}.",
                            f"Paid by {buyer['name']}: {money(total)}."]))
    return "\n".join(rows), dict(buyer, merchant=merchant, total=total)


def letter(rng: random.Random) -> tuple[str, dict]:
    """A short letter: names in prose, restated at the end."""
    a = applicant(rng)
    b = person(rng)
    text = " ".join([
        f"Dear {a['name']},",
        f"thank you for your application for {a['purpose']}.",
        f"We have received your pay slip from {a['employer']} showing {money(a['income'])} a month.",
        f"Your advisor, {b['name']}, will call you this week.",
        f"Kind regards, {b['name']}, Pinecrest Bank.",
        rng.choice([f"Copy sent to {a['name']}.", f"Reference: {a['name']}, {money(a['loan'])}."]),
    ])
    return text, dict(a, advisor=b["name"])


DOMAIN_DOCS = [mortgage_application, pay_slip, bank_statement, loan_memo, letter]


def domain_document(rng: random.Random) -> str:
    if rng.random() < 0.12:
        return receipt(rng)[0]
    return rng.choice(DOMAIN_DOCS)(rng)[0]


def application_file(rng: random.Random) -> str:
    """Several documents about one applicant: names and amounts recur across them."""
    a = applicant(rng)
    docs = rng.sample([mortgage_application, pay_slip, loan_memo, bank_statement], k=rng.randrange(2, 4))
    return "\n\n".join(d(rng, a)[0] for d in docs)


# ----------------------------------------------------------------------------- general text

def story(rng: random.Random) -> str:
    """A short children's story in which the hero's name recurs (copying pays in plain text too)."""
    hero, friend = rng.choice(FIRST_NAMES), rng.choice(FIRST_NAMES)
    while friend == hero:
        friend = rng.choice(FIRST_NAMES)
    animal, obj, place = rng.choice(ANIMALS), rng.choice(OBJECTS), rng.choice(PLACES)
    color, feel = rng.choice(COLORS), rng.choice(FEELINGS)
    s = [
        rng.choice([f"Once upon a time, there was a child named {hero}.",
                    f"{hero} lived in a small house near {place}.",
                    f"One morning, {hero} woke up early."]),
        rng.choice([f"{hero} had a {color} {obj}.", f"{hero} loved to play with a {color} {obj}."]),
        rng.choice([f"One day, {hero} went to {place} with {friend}.",
                    f"{hero} and {friend} walked to {place}."]),
        rng.choice([f"There they saw a {animal}.", f"At {place}, a {animal} came to say hello."]),
        rng.choice([f"The {animal} took the {obj} and ran away.", f"The {animal} was {feel} and hungry."]),
        rng.choice([f"{friend} said, \"Do not worry, {hero}. We will help.\"",
                    f"\"Look, {friend}!\" said {hero}. \"The {animal} needs a friend.\""]),
        rng.choice([f"{hero} gave the {animal} some bread.", f"{hero} and {friend} shared their lunch."]),
        rng.choice([f"In the end, {hero} felt {feel}.", f"That night, {hero} smiled and went to sleep."]),
        rng.choice([f"{hero} and {friend} became best friends.", f"{hero} never forgot the {animal}."]),
    ]
    return " ".join(s)


def fact(rng: random.Random) -> str:
    """Plain encyclopaedic sentences: general text without names."""
    animal, place = rng.choice(ANIMALS), rng.choice(PLACES)
    city = rng.choice(CITIES)
    n = rng.randrange(2, 40)
    return " ".join(rng.sample([
        f"The {animal} is an animal that lives near {place}.",
        f"Many people in {city} walk to {place} on Sunday.",
        f"A {animal} can sleep for {n} hours a day.",
        f"The town of {city} has {n} schools and a library.",
        "Water boils at 100 degrees and freezes at 0 degrees.",
        "A week has 7 days and a year has 12 months.",
        f"In spring the trees in {city} turn green.",
        "Bread is made from flour, water and salt.",
        "A bank keeps money safe and lends it to people who want to buy a home.",
        "People who borrow money pay it back in monthly payments.",
    ], k=rng.randrange(3, 6)))


def general_text(rng: random.Random) -> str:
    return story(rng) if rng.random() < 0.7 else fact(rng)


# ----------------------------------------------------------------------------- copy drills

_DRILL_WORDS = (FIRST_NAMES + LAST_NAMES + CITIES + JOBS + ANIMALS + OBJECTS + COLORS
                + ["the", "a", "and", "to", "of", "in", "is", "was", "for", "on", "with", "at", "by"])


def _token_soup(rng: random.Random, n: int) -> str:
    parts = []
    for _ in range(n):
        r = rng.random()
        if r < 0.65:
            parts.append(rng.choice(_DRILL_WORDS))
        elif r < 0.85:
            parts.append(str(rng.randrange(0, 10000)))
        else:
            parts.append(rng.choice([",", ".", "$" + str(rng.randrange(1, 999)), "-", ":", ";"]))
    return " ".join(parts).replace(" ,", ",").replace(" .", ".")


def copy_drill(rng: random.Random) -> str:
    """Text that can only be predicted by copying: ledgers read back, lists repeated, codes quoted."""
    kind = rng.randrange(4)
    if kind == 0:  # a ledger, then some entries looked up again
        names = [person(rng)["name"] for _ in range(rng.randrange(3, 7))]
        amounts = [money(rng.randrange(10, 99999)) for _ in names]
        rows = [f"{n}: {m}" for n, m in zip(names, amounts)]
        order = rng.sample(range(len(names)), k=len(names))
        check = [f"{names[i]}: {amounts[i]}" for i in order[: rng.randrange(2, len(names) + 1)]]
        return "Ledger\n" + "\n".join(rows) + "\nChecked again\n" + "\n".join(check)
    if kind == 1:  # a list, read back in full
        seq = _token_soup(rng, rng.randrange(6, 20))
        return f"The clerk wrote: {seq}\nThe clerk read it back: {seq}"
    if kind == 2:  # key = value pairs, then questions answered from them
        keys = rng.sample(_DRILL_WORDS, k=rng.randrange(3, 7))
        vals = [str(rng.randrange(0, 100000)) if rng.random() < 0.5 else person(rng)["name"] for _ in keys]
        kv = ", ".join(f"{k} = {v}" for k, v in zip(keys, vals))
        idx = rng.sample(range(len(keys)), k=rng.randrange(1, len(keys) + 1))
        return f"Table: {kv}.\n" + "\n".join(f"{keys[i]} = {vals[i]}" for i in idx)
    # a quoted record restated
    p = applicant(rng)
    fields = {"name": p["name"], "city": p["city"], "amount": money(p["loan"])}
    return (f"{p['name']} from {p['city']} asked for {money(p['loan'])}.\n" + record_line(fields))


# ----------------------------------------------------------------------------- the mixture

def pretraining_document(rng: random.Random, copy_share: float = 0.2) -> str:
    """One document of the pretraining mixture: general text, domain text or a copy drill."""
    r = rng.random()
    if r < copy_share:
        return copy_drill(rng)
    r = rng.random()
    if r < 0.45:
        return general_text(rng)
    if r < 0.6:
        return application_file(rng)
    return domain_document(rng)


def pay_slip_arithmetic(text: str) -> dict | None:
    """Does a pay slip's own arithmetic hold? {"gross", "tax", "net", "gross_minus_tax", "adds_up"} from
    the first "Gross pay: $X", "Tax withheld: $Y" and "Net pay: $Z" in TEXT, or None when one is missing.
    Lesson 00 runs it on a generated slip: a model that copies the look of a document need not compute."""
    import re

    found = {}
    for key, label in (("gross", "Gross pay"), ("tax", "Tax withheld"), ("net", "Net pay")):
        m = re.search(rf"{label}: \$([\d,]+)", text)
        if m is None:
            return None
        found[key] = int(m.group(1).replace(",", ""))
    found["gross_minus_tax"] = found["gross"] - found["tax"]
    found["adds_up"] = found["gross_minus_tax"] == found["net"]
    return found


def copy_probe(n: int, seed: int) -> list[dict]:
    """Held-out documents cut right before a later restatement of a name or an amount.

    Returns a list of {"prompt", "answer", "kind"}: the prompt ends just before the space that precedes
    the restated value, and the model should continue it with " " + answer, which it can only know by
    copying it from earlier in the same document (names and amounts are drawn at random).
    """
    rng = random.Random(seed)
    out: list[dict] = []
    while len(out) < n:
        kind = "name" if len(out) % 2 == 0 else "amount"
        gen = rng.choice([mortgage_application, pay_slip, bank_statement, loan_memo])
        text, a = gen(rng)
        lines = [ln for ln in text.split("\n") if not ln.startswith("Record:")]
        last = lines[-1]
        earlier = "\n".join(lines[:-1])
        if kind == "name":
            value = a["name"]
        else:
            amounts = [m for m in re.findall(r"\$[\d,]+\d", last) if m in earlier]
            if not amounts:
                continue
            value = amounts[-1]
        pos = last.find(" " + value)
        if pos < 0 or value not in earlier:
            continue
        out.append({"prompt": earlier + "\n" + last[:pos], "answer": value, "kind": kind})
    return out
