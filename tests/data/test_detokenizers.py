"""The zero-shot suite's detokenizers, rule by rule, on the released files' idioms (expected strings by hand)."""

from md4_jax.data import detokenizers


def test_wikitext():
  released = ' The well @-@ known city has 1 @,@ 000 people , a 3 @.@ 5 km road ( the A1 ) ; it " grew " . \n'
  assert detokenizers.wikitext(released) == ' The well-known city has 1,000 people, a 3.5 km road (the A1); it "grew".\n'
  assert detokenizers.wikitext(" = = Early life = = \n") == " == Early life ==\n"
  assert detokenizers.wikitext(" = = = Notes = = = \n") == " === Notes ===\n"
  assert detokenizers.wikitext("the players ' club") == "the players' club"
  # The standard rules' quirk, kept for comparable numbers: two apostrophes on a line form a "pair".
  assert detokenizers.wikitext("the players ' club and the city 's mayor") == "the players'club and the city's mayor"
  assert detokenizers.wikitext("in N years at 20 \N{DEGREE SIGN} C") == "in 1 years at 20\N{DEGREE SIGN}C"
  assert detokenizers.wikitext("a [ b ] { c }") == "a [b] {c}"
  assert detokenizers.wikitext("") == ""  # a blank line stays an empty document


def test_ptb():
  assert detokenizers.ptb("it does n't cost $ N N million") == "it doesn't cost $1 1 million"
  assert detokenizers.ptb("the company 's players ' club said a \\/ b # N <unk>") == \
      "the company's players' club said a / b #1 ?"
  # Order matters: " 's" is joined before numbers, so "N" followed by "'s" is no longer " N ".
  assert detokenizers.ptb("the N 's best") == "the N's best"
  assert detokenizers.ptb(" N N N N ") == " 1 1 1 1 "


def test_lm1b():
  assert detokenizers.lm1b('He said " it \'s fine " ( really ) : http : / / x.com , $ 5 .') == \
      'He said "it\'s fine" (really): http://x.com, $5.'
  assert detokenizers.lm1b("Why ? Yes ! A / B ; \N{POUND SIGN} 3 [ note ]") == \
      "Why? Yes! A/B; \N{POUND SIGN}3 [note]"


def test_lambada():
  assert detokenizers.lambada("  \N{LEFT DOUBLE QUOTATION MARK}hello\N{RIGHT DOUBLE QUOTATION MARK} she said \n") == \
      '\n"hello" she said'
