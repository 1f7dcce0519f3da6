"""Prompt-injection detection: does text in an event speak *to the model* instead of about the
customer's matter?

A customer writes about their card, their invoice, their login. Text that overrides the model's
instructions, poses as the system or the assistant, dictates the answer, smuggles in a chat
template's tokens, asks for the prompt or for secrets, or is addressed to "the AI reading this"
is an injection whatever the model would answer: the event goes to a person, never to the model.

Each family below is a handful of patterns over words that name the model's machinery
(instructions, prompts, roles, the answer's fields), so an ordinary request — "please ignore my
previous email", "System: macOS 14", a JSON payload, a ``{{name}}`` token in a log line — passes.
The patterns are RE2 (``google-re2``): matching is linear in the text's length by construction, so
a 900 KB body costs milliseconds and no phrasing can make it backtrack.

Text is read twice: as written (so a finding quotes the event), then normalised — Unicode
compatibility forms (full-width letters), accents and invisible characters dropped, look-alike
Greek and Cyrillic letters and digits read as Latin letters inside Latin words, letters spaced
out ("i g n o r e") joined — for phrasings in other languages and disguised ones. Phrasings it
does not know pass: it narrows the hole; a person's review of what it catches closes it.
"""

from __future__ import annotations

import re
import unicodedata
from enum import StrEnum

import re2
from pydantic import BaseModel


class Family(StrEnum):
    OVERRIDE = "instruction override"
    ROLE = "role or turn marker"
    DICTATED = "dictated answer"
    TEMPLATE = "template or format token"
    REVEAL = "request for the prompt or secrets"
    ADDRESSED = "addressed to the model"
    PERSONA = "persona switch"


class Finding(BaseModel):
    family: Family
    text: str

    def __str__(self) -> str:
        return f"{self.family}: {self.text!r}"


def _any(*words: str) -> str:
    return "(?:" + "|".join(words) + ")"


LETTERS = r"\p{Latin}\p{Greek}\p{Cyrillic}"
"""The scripts a word is read in: RE2's word class is ASCII only, and all letters make each pattern ten times larger."""
L = rf"[{LETTERS}0-9_]"  # a letter of a word
SEP = rf"[^{LETTERS}0-9]{{1,4}}"  # between two words: spaces, punctuation, a hyphen, a line break


def _gap(words: int) -> str:
    """Up to ``words`` words between two parts of a pattern, and the separators around them."""
    return rf"(?:{SEP}{L}+){{0,{words}}}{SEP}"


# ---- the vocabulary of the model's machinery ------------------------------------------------------

MODEL = _any(r"ai", r"a\.i\.", r"bots?", r"chat ?bots?", r"models?", r"llms?", r"language models?", r"assistants?",
             r"classifiers?", r"agents?", r"gpt", r"chat ?gpt", r"claude", r"gemini", r"copilot", r"machines?",
             r"algorithms?", r"triage(?: system| bot)?", r"automated (?:system|assistant|triage|reader|agent)s?")
ROLE_LABEL = _any(r"system", r"sys", r"assistant", r"ai", r"developer", r"dev", r"admin", r"administrator", r"root",
                  r"operator", r"model", r"bot", r"llm", r"gpt", r"chatgpt", r"classifier", r"sistema", r"systeme",
                  r"system[ée]", r"система", r"系统", r"システム")
ROLE_SUFFIX = _any(r"message", r"prompt", r"override", r"instructions?", r"note", r"command", r"update", r"mode",
                   r"notice", r"directive", r"agents?", r"assistants?", r"models?")
DIRECTIVE = r"\b" + _any(
    r"you", r"your", r"must", r"shall", r"ignore", r"disregard", r"override", r"bypass", r"skip", r"classify",
    r"categori[sz]e", r"label (?:this|it|as)", r"mark (?:this|it|as)", r"route", r"escalate", r"approve", r"refund",
    r"grant", r"authori[sz]e", r"respond", r"reply", r"output", r"return", r"print", r"reveal", r"do not", r"don'?t",
    r"never", r"always", r"treat", r"priority", r"urgent", r"urgency", r"confidence", r"intent", r"category",
    r"new (?:policy|instructions?|task|rules?)", r"(?:human|manual) review", r"sure", r"i have", r"i'?ll", r"i will",
    r"aprobar", r"aprueba", r"reembolso", r"escala", r"escaladez", r"prioritaire", r"urgente", r"genehmige",
    r"erstatte", r"eskaliere", r"rimborso", r"approva", r"aprove", r"sin revision", r"sans (?:verification|revision)",
) + r"\b"
OVERRIDE_VERB = _any(r"ignore", r"ignoring", r"disregard", r"disregarding", r"forget", r"forgetting", r"override",
                     r"overriding", r"bypass", r"bypassing", r"discard", r"drop", r"abandon", r"neglect",
                     r"set aside", r"put aside", r"pay no (?:attention|heed) to", r"stop following",
                     r"do not follow", r"don'?t follow", r"no longer follow", r"stop obeying", r"do not obey",
                     r"don'?t obey", r"erase", r"wipe", r"throw out", r"scrap")
PLAIN_OBJECT = _any(r"prompts?", r"system prompt", r"system message", r"guardrails", r"programming", r"directives?",
                    r"training", r"initial instructions", r"original instructions", r"(?:all |any )?prior context",
                    r"everything (?:above|before|else|you(?:'ve| were| have been) (?:told|given))")
OBJECT = _any(r"instructions?", r"guidelines", r"rules", r"policies", r"constraints", r"commands", r"orders",
              r"context", r"restrictions", r"prompts?", r"directives?", r"everything (?:above|before|else|you)",
              r"(?:all )?(?:of )?the above", r"what you (?:were|have been) told", r"safety (?:checks|rules|filters)")
QUALIFIER = _any(r"previous", r"prior", r"earlier", r"preceding", r"above", r"former", r"old", r"original",
                 r"initial", r"your", r"all (?:the |your |of the |of your )?(?:previous |prior |earlier |above )?",
                 r"any(?: and all)?", r"every", r"these", r"those", r"system", r"the system'?s?", r"default",
                 r"configured", r"built-in", r"given", r"routing", r"classification", r"triage", r"safety")
SECRET = _any(r"api[ _-]?keys?", r"secrets?(?: keys?| tokens?)?", r"secret (?:keys?|tokens?)", r"credentials",
              r"passwords?", r"access tokens?", r"tokens", r"environment variables", r"env vars",
              r"config(?:uration)? files?", r"private keys?")
ANSWER_KEY = _any(r"category", r"urgency", r"intent", r"priority", r"label", r"classification", r"confidence",
                  r"severity", r"escalate", r"escalation", r"route", r"override\w*", r"\w+_label", r"verdict",
                  r"decision", r"action")
STRONG_KEY = _any(r"intent", r"urgency", r"classification", r"confidence", r"override\w*", r"\w+_label",
                  r"escalate")
_KV = (rf"(?:^|[^{LETTERS}0-9])[\"'\[<|{{]*(?:\w+\.)?{ANSWER_KEY}[\"'\]>|]*\s*(?:[:=：]|->|=>|\|)\s*[\"'<\[]?"
       rf"[{LETTERS}0-9_.%-]+")
_XML = rf"<({ANSWER_KEY})>\s*[{LETTERS}0-9_ .%-]{{1,40}}\s*</"
_BRACES = _any(r"\{\{\{?", r"\{%", r"\$\{", r"<%=?", r"\[\[")
_MACHINERY = _any(r"system", r"prompt", r"instruction", r"assistant", r"secret", r"api_?key", r"password",
                  r"token", r"config", r"credential", r"admin", r"role", r"jailbreak", r"override", r"ai", r"llm")

# ---- per-language phrasings: (override verbs, objects, qualifiers, "classify/mark" verbs, "this", "as") --------------
# Read on the normalised text: lower case, accents dropped.
LANGUAGES = {
    "fr": (r"ignore[rz]?|oublie[rz]?|ne tenez pas compte d[eu]s?|faites abstraction d[eu]s?",
           r"instructions?|consignes?|regles|directives|prompt|invite",
           r"precedentes|anterieures|ci-dessus|initiales|vos|tes|toutes (?:les|vos)",
           r"classe[rz]?|classifie[rz]?|marque[rz]?|etiquete[rz]?|categorise[rz]?", r"ce ticket|ce message|ceci|cela|la demande",
           r"comme|en"),
    "es": (r"ignora|ignore|ignorar|olvida|olvide|olvidar|omite|descarta|haz caso omiso de",
           r"instrucciones|reglas|indicaciones|directrices|prompt",
           r"anteriores|previas|de arriba|iniciales|tus|sus|todas (?:las|tus)",
           r"clasifica|clasifique|marca|marque|etiqueta|etiquete|categoriza", r"esto|este (?:ticket|mensaje|caso)|eso",
           r"como"),
    "pt": (r"ignore|ignora|ignorar|esqueca|esquece|desconsidere|descarte",
           r"instrucoes|regras|diretrizes|orientacoes|prompt",
           r"anteriores|previas|acima|iniciais|suas|tuas|todas as",
           r"classifique|classifica|marque|marca|rotule", r"isto|isso|este (?:ticket|pedido|chamado)", r"como"),
    "it": (r"ignora|ignorare|dimentica|trascura", r"istruzioni|regole|direttive|prompt",
           r"precedenti|di sopra|iniziali|tue|sue|tutte le",
           r"classifica|contrassegna|segna|etichetta", r"questo|questa richiesta|questo ticket", r"come"),
    "de": (r"ignoriere|ignorieren sie|ignorier|vergiss|vergessen sie|missachte|missachten sie|uberschreibe",
           r"anweisungen|regeln|vorgaben|instruktionen|richtlinien|prompt|systemprompt",
           r"vorherigen|bisherigen|obigen|fruheren|alle|deine|ihre|samtliche",
           r"klassifiziere|klassifizieren sie|markiere|markieren sie|stufe|kategorisiere", r"dies|das|dieses ticket|diese anfrage|es",
           r"als"),
    "nl": (r"negeer|vergeet|negeren", r"instructies|regels|richtlijnen|opdrachten|prompt",
           r"vorige|eerdere|bovenstaande|alle|je|jouw|uw",
           r"markeer|classificeer|label", r"dit|dit ticket|deze vraag", r"als"),
    "pl": (r"zignoruj|ignoruj|zapomnij", r"instrukcj[eia]|polecenia|zasady|regu[lł]y|prompt",
           r"poprzednie|wcze[sś]niejsze|powy[zż]sze|wszystkie|swoje",
           r"oznacz|sklasyfikuj|zaklasyfikuj", r"to|ten (?:ticket|wniosek)", r"jako"),
    "lt": (r"ignoruok|ignoruokite|pamirsk|pamirskite", r"instrukcijas|taisykles|nurodymus",
           r"ankstesnes|ankstesnius|visas|visus|savo",
           r"pazymek|klasifikuok", r"tai|si", r"kaip"),
    "ru": (r"игнорируй|игнорируйте|проигнорируй|забудь|забудьте|не обращай внимания на",
           r"инструкции|указания|правила|промпт|подсказки",
           r"предыдущие|прежние|все|свои|вышеуказанные|твои|ваши",
           r"пометь|отметь|классифицируй|помечай", r"это|этот (?:запрос|тикет)", r"как"),
}


def _language_patterns() -> list[str]:
    patterns = []
    for verbs, objects, qualifiers, mark, this, as_ in LANGUAGES.values():
        obj, qual = f"(?:{objects})", f"(?:{qualifiers})"
        patterns.append(rf"(?:^|[^{LETTERS}])(?:{verbs}){_gap(1)}(?:{qual}{_gap(1)}{obj}|{obj}{SEP}{qual})(?:[^{LETTERS}]|$)")
        patterns.append(rf"(?:^|[^{LETTERS}])(?:{mark}){SEP}(?:{this}){SEP}(?:{as_})(?:[^{LETTERS}]|$)")
    return patterns


PATTERNS: dict[Family, list[str]] = {
    Family.OVERRIDE: [
        rf"\b{OVERRIDE_VERB}{_gap(4)}{PLAIN_OBJECT}\b",
        rf"\b{OVERRIDE_VERB}{_gap(2)}{QUALIFIER}{_gap(2)}{OBJECT}\b",
        rf"\b{OVERRIDE_VERB}\s+(?:all\s+)?(?:of\s+)?(?:everything\s+|the\s+(?:text\s+|lines?\s+)?)above(?:[.,;:!)]|\s*$|"
        r"\s+(?:and|then|instructions|text|rules|prompt|lines?|context|directions)\b)",
        rf"\b{OVERRIDE_VERB}{_gap(3)}{OBJECT}{SEP}(?:above|before|given|so far|until now|you (?:were|have been) given|you received)\b",
        rf"\b{OBJECT}(?:{SEP}{L}+){{0,6}}{SEP}(?:are|is|were|have been|has been)(?: now)?(?: hereby)?{SEP}"
        r"(?:void|null|cancell?ed|revoked|obsolete|superseded|invalid|overridden|lifted|suspended|disabled|replaced|"
        r"updated|changed|no longer (?:valid|apply|in effect)|to be ignored)\b",
        r"\b(?:new|updated|revised|real|actual|secret|hidden|priority|override) (?:instructions?|directives?|system prompt)"
        r"(?:[^\p{Latin}\p{Greek}\p{Cyrillic}0-9]{0,3}(?:for|from|to) (?:the |any |all )?" + MODEL + r"\b|\s*[:：]| supersede| replace| override|"
        r" take precedence| follow| are| from the)",
        r"\bnew task\s*[:：]",
        r"\byour (?:new |real |only |sole |true |actual |primary )?(?:task|job|goal|purpose|instructions?|mission) "
        r"(?:is|are|now is|is now)\b",
        r"\b(?:do|follow|obey) (?:exactly |only )?(?:what|as) i (?:say|tell you|instruct|command)\b",
        r"\bobey (?:only |me|the customer|the user|these|this|my)",
        r"\b(?:instructions?|text|rules)(?:[^\p{Latin}\p{Greek}\p{Cyrillic}0-9]+[\p{Latin}\p{Greek}\p{Cyrillic}0-9]+){0,4}[^\p{Latin}\p{Greek}\p{Cyrillic}0-9]+takes? precedence\b",
        r"\b(?:disable|turn off|deactivate|bypass|lift|suspend) (?:all )?your (?:[\p{Latin}\p{Greek}\p{Cyrillic}]+ )?"
        r"(?:checks|filters|guardrails|restrictions|rules|guidelines|safety|limits)\b",
        r"(?:忽略|无视|忘记|不要理会|忽视)[^。！？\n]{0,12}(?:指令|指示|说明|提示|规则|设定)",
        r"(?:指示|命令|ルール|プロンプト)[^。！？\n]{0,12}(?:無視|忘れ)",
        r"(?:talimat|kural|yonerge)[\p{Latin}\p{Greek}\p{Cyrillic}]*(?:\s+[\p{Latin}\p{Greek}\p{Cyrillic}]+)?\s+(?:yok say|gormezden gel|unut)",
        *_language_patterns(),
    ],
    Family.ROLE: [
        r"(<\|[\p{Latin}\p{Greek}\p{Cyrillic}_ ]{2,24}\|>)",
        r"(\[/?inst\]|<</?sys>>|</s>\s*<s>)",
        r"(?:^|\n)\s*#{2,}\s*(?:instruction|response|system|assistant|input|new instructions?)s?\b",
        r"(<\s*(?:system|assistant|instructions?|sys|developer|admin|prompt)\s*>)(?s:.){0,400}?</\s*(?:system|assistant|instructions?|sys|developer|admin|prompt)\s*>",
        rf"(<\s*(?:system|assistant|instructions?|sys|developer|admin)\s*>)[^\n<]{{0,200}}?{DIRECTIVE}",
        rf"(?:^|[\n\r]|[.!?]\s|[\[(<{{|*#>~-]|<!--)\s*({ROLE_LABEL}(?:[ _-]?{ROLE_SUFFIX})?)\s*\]?\s*[:：][^\n]{{0,160}}?{DIRECTIVE}",
        rf"(\[\s*{ROLE_LABEL}(?:[ _-]?{ROLE_SUFFIX})?\s*\])[^\n]{{0,160}}?{DIRECTIVE}",
        r"(\[?\s*(?:system|admin|developer|root)[ _-]?(?:override|instructions?|command|directive)\s*\]?)",
        r"(?:^|\n)\s*(?:human|user|customer)\s*:[^\n]{0,300}\n+\s*(?:assistant|ai|bot|model)\s*:",
        r"[\"']role[\"']\s*:\s*[\"'](?:system|assistant|developer)[\"']",
        r"\b(?:end|begin|start) of (?:the )?(?:user input|user message|system prompt|prompt|instructions|context)\b",
    ],
    Family.DICTATED: [
        r"\b(?:classify|classified|categori[sz]e|categori[sz]ed|label|tag|mark|flag|file|triage|record|register)"
        r"(?: (?:this|it|me|my (?:ticket|message|query|request|case)|the (?:ticket|message|query|request|case|"
        r"conversation|email|chat)|this (?:ticket|message|query|request|case|one|conversation|email|chat)))"
        r"(?: (?:straight|directly|immediately|right away|now|simply|just|correctly|please))?"
        r" (?:as|under|into)\b",
        r"\b(?:classify|categori[sz]e|label|tag) as\b",
        r"\b(?:set|change|make|update|put|raise)\s+(?:the\s+|my\s+|this\s+|its\s+)?(?:category|urgency|intent|priority|"
        r"classification|confidence|severity|label)(?:\s+(?:of|for)\s+(?:this|my|the)\s+(?:ticket|case|message|query|"
        r"request|one))?\s+(?:to|as|=|at)\b",
        r"\b(?:respond|reply|answer|output|return|print|say)(?: only| just)?(?: with| as)?[:\s]+(?:[\p{Latin}\p{Greek}\p{Cyrillic}]+\s+){0,3}?"
        r"(?:the )?(?:category|intent|urgency|label|confidence|classification|the word|json)\b",
        r"\bthe (?:correct|right|real|true|proper|actual|expected|final) (?:intent|category|label|answer|classification|"
        r"urgency|priority|output|route)(?: (?:for|of) (?:this|the) (?:query|ticket|message|request|case))? (?:is|=|:)",
        r"\b(?:final[ _]answer|expected[ _]output|correct[ _]output|model[ _]output)\s*[:=]",
        r"\b(?:confidence|certainty|probability)\s*(?:of|=|:|at|to|level|score)?\s*[\"']?(?:1(?:\.0+)?|100\s*%|0?\.9\d+|"
        r"99(?:\.\d+)?\s*%|maximum|max|full)(?:[^0-9.]|$)",
        r"\bwith (?:full|100\s*%|maximum|complete|absolute|total|high) confidence\b",
        r"\broute (?:this|it|me)(?: (?:ticket|message|query|request|one))?(?: (?:straight|directly|immediately|right away))?"
        r" to (?:the )?(?:escalation|security|closures|manager|priority)",
        rf"(?s){_KV}.{{0,120}}?{_KV}",
        rf"{_XML}",
        rf"[\"']{STRONG_KEY}[\"']\s*:\s*[\"']?[{LETTERS}0-9_.%-]+",
        rf"(?:\w+\.)?(?:intent|category|urgency|classification|label)\s*(?:=|->|=>)\s*[\"']?[{LETTERS}_]",
    ],
    Family.TEMPLATE: [
        rf"({_BRACES}[^{{}}%>\]\n]{{0,40}}?{_MACHINERY}[^{{}}\n]{{0,60}}?(?:\}}\}}|%\}}|\}}|%>|\]\]|:))",
    ],
    Family.REVEAL: [
        r"\b(?:print|show|reveal|repeat|output|display|tell me|give me|share|send(?: me)?|leak|dump|echo(?: back)?|"
        r"recite|paste|write out|spell out|translate|copy|expose|disclose|provide|reply with|respond with|what (?:are|were|is)|"
        r"list)(?:\s+[\p{Latin}\p{Greek}\p{Cyrillic}]+){0,3}?\s+(?:your|the system'?s?)\s+(?:[\p{Latin}\p{Greek}\p{Cyrillic}]+\s+){0,2}?(?:system prompt|prompt|instructions|"
        r"rules|guidelines|configuration|config|directives|context(?: window)?|system message|training|programming)\b",
        rf"\b(?:print|show|reveal|output|display|tell me|give me|share|send(?: me)?|leak|dump|echo|list|paste|"
        rf"expose|disclose|provide|reply with|respond with)(?:\s+[{LETTERS}]+){{0,4}}?\s+{SECRET}\b(?:\s+[{LETTERS}]+){{0,3}}?\s+"
        rf"(?:stored|in your|of (?:the|all|every|other|your)|you (?:have|use|can see|know))",
        rf"\b(?:dump|leak|reveal|print|expose)\s+(?:all\s+|any\s+|your\s+|the\s+)+{SECRET}",
        r"\b(?:repeat|print|output|echo|copy|recite|paste)\s+(?:back\s+)?(?:the\s+|all\s+)?(?:text|words|content|"
        r"everything|message|instructions)\s+(?:above|before|preceding|prior)",
        r"\b(?:prompt|instructions|rules|guidelines)(?: that)? you (?:were|have been|got|are) (?:given|told|provided|using)\b",
        r"\bcontents of your\b",
        r"\b(?:list|send|give|show|dump|export|share|provide|reveal|tell)(?: me)?(?: with)?(?: the)?(?: full)?"
        r"(?: list of)?(?: all)?(?: the)? (?:[\p{Latin}\p{Greek}\p{Cyrillic}]+ )?(?:email addresses|emails|phone numbers|passwords|api keys|"
        r"card numbers|accounts|customers|users|admins) of (?:all|every|other|your)\b",
        r"\bfull list of (?:all )?(?:the )?(?:[\p{Latin}\p{Greek}\p{Cyrillic}]+ ){0,2}(?:admins|administrators|users|customers|employees|accounts)"
        r" and their\b",
        r"\bwhat (?:was|is) (?:written|said|stated) in (?:your|the) (?:system message|prompt|instructions)\b",
        r"(?:prompt (?:du )?systeme|prompt del sistema|prompt do sistema|systemprompt|системн[\p{Latin}\p{Greek}\p{Cyrillic}]* промпт|系统提示|"
        r"システムプロンプト)",
    ],
    Family.ADDRESSED: [
        rf"\b(?:note|message|instructions?|attention|reminder|memo|hint|request|p\.?s\.?)\s+(?:to|for)\s+(?:the\s+|any\s+|"
        rf"all\s+|whatever\s+|whichever\s+|an?\s+|every\s+)?(?:automated\s+|automatic\s+)?{MODEL}\b",
        rf"\b(?:to|for|attention|attn)\s+(?:the\s+|any\s+|all\s+|whatever\s+|whichever\s+|an?\s+|every\s+)?"
        rf"(?:automated\s+|automatic\s+)?{MODEL}\s+(?:(?:that|who|which)\s+)?(?:reads?|reading|process(?:es|ing)?|handl"
        rf"(?:es|ing)|triag(?:es|ing)|sees?|seeing|looking at)\b",
        rf"\b(?:for|attention|attn)\s+(?:the\s+)?(?:automated\s+|automatic\s+){MODEL}\s*[:,]",
        rf"\b(?:attention|attn)\s*[,:]?\s+(?:the\s+|all\s+|any\s+)?(?:{MODEL}\s+)?{MODEL}\s*[:,!]",
        rf"\b(?:dear|hey|hi|hello|attention|attn|ok|okay|listen)\s*,?\s+(?:{MODEL})\s*[,:!]?(?:[^\n.?!]{{0,80}}?){DIRECTIVE}",
        rf"\bif\s+(?:you\s+are|you're|you\s+happen\s+to\s+be)\s+(?:an?\s+|the\s+)?(?:[{LETTERS}]+\s+)?{MODEL}\b",
        rf"\bif\s+(?:an?|any|the|another|some)\s+(?:[{LETTERS}]+\s+)?{MODEL}\s+(?:is\s+|are\s+)?(?:reads?|reading|process"
        rf"(?:es|ing)?|handl(?:es|ing)|sees?|seeing|triag(?:es|ing))\b",
        rf"\bif\s+this\s+(?:goes|is\s+sent|gets\s+(?:sent|forwarded)|is\s+(?:read|processed))\s+(?:to|by)\s+"
        rf"(?:an?\s+|another\s+|the\s+|any\s+)?{MODEL}\b",
        rf"(?:^|\n)\s*{MODEL}\s*,\s*(?:just|please|now)\b",
    ],
    Family.PERSONA: [
        r"\byou\s+are\s+(?:now|no longer|from now on|henceforth|going to be|actually)\s+(?:an?\s+|the\s+|my\s+|in\s+|"
        r"a\s+helpful|bound|restricted|limited|required|subject|dan\b|free\b|unrestricted|allowed|authori[sz]ed|permitted|"
        r"operating|acting|jailbroken|[\p{Latin}\p{Greek}\p{Cyrillic}]+bot\b|[\p{Latin}\p{Greek}\p{Cyrillic}]+gpt\b)",
        r"\byou\s+are\s+(?:an?\s+)?(?:unrestricted|uncensored|unfiltered|jailbroken|helpful assistant|ai (?:with|without|that))",
        r"\b(?:from now on|from here on|henceforth|starting now|for the rest of (?:this|the) conversation)[,]?\s+"
        r"(?:you|your|obey|act|respond|answer|always|only|ignore|pretend)\b",
        r"\b(?:act|behave|operate|function)\s+as\s+(?:if you were\s+|though you were\s+)?(?:an?|my|the)\s+(?:[\p{Latin}\p{Greek}\p{Cyrillic}]+\s+){0,2}?"
        r"(?:ai|assistant|bot|model|banker|manager|admin|administrator|agent|employee|developer|gpt|dan|unrestricted|"
        r"jailbroken|support agent)\b",
        r"\bpretend\s+(?:that\s+)?(?:you\s+are|you're|to\s+be|you\s+have|you\s+work)\b",
        r"\brole[- ]?play(?:ing)?\s+as\b",
        r"\b(?:enter|switch to|activate|enable|go into|turn on|you are (?:now )?in|now in)\s+(?:the\s+|your\s+)?"
        r"(?:developer|maintenance|debug|god|admin|jailbreak|dan|unrestricted|sudo|root|test)\s+mode\b",
        r"\b(?:jailbreak\s*[:：]|jailbreak mode|do anything now|you (?:have been|are) (?:freed|liberated|jailbroken|unlocked)|"
        r"freed from your)",
        r"\b(?:ai|model|assistant|bot|answer|respond|reply)\s+(?:[\p{Latin}\p{Greek}\p{Cyrillic}]+\s+){0,2}?(?:with no|without(?: any)?)\s+"
        r"(?:restrictions|filters|limitations|rules|guidelines|censorship|safety)\b",
        r"\blet'?s play a game\b[^\n]{0,40}\byou are\b",
        r"(?:^|[^\p{Latin}\p{Greek}\p{Cyrillic}])(?:du bist (?:jetzt|nun|ab jetzt)|tu es (?:maintenant|desormais)|ahora eres|agora voce e|"
        r"sei ora|jij bent nu|ты теперь|теперь ты|你现在是|あなたは今)(?:[^\p{Latin}\p{Greek}\p{Cyrillic}]|$)",
    ],
}

# ---- normalising disguises ------------------------------------------------------------------------

_LOOKALIKES = str.maketrans({
    "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "х": "x", "у": "y", "і": "i", "ј": "j", "ѕ": "s",
    "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C", "Т": "T", "Х": "X",
    "α": "a", "ε": "e", "ι": "i", "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "ν": "v",
    "Α": "A", "Β": "B", "Ε": "E", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O", "Ρ": "P", "Τ": "T", "Χ": "X",
})
_DIGITS_AS_LETTERS = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"})
_MIXED_WORD = re2.compile(r"[\p{Latin}\p{Greek}\p{Cyrillic}0-9@$]*(?:\p{Latin}[\p{Greek}\p{Cyrillic}]|"
                          r"[\p{Greek}\p{Cyrillic}]\p{Latin}|[\p{Latin}\p{Greek}\p{Cyrillic}][0-9@$]|"
                          r"[0-9@$][\p{Latin}\p{Greek}\p{Cyrillic}])[\p{Latin}\p{Greek}\p{Cyrillic}0-9@$]*")
_SPACED_OUT = re2.compile(r"(?:\p{Latin}[ .]){3,}\p{Latin}(?:[^\p{Latin}]|$)")
_LATIN = re2.compile(r"[A-Za-z]")


def _unmarked(text: str) -> str:
    """Compatibility forms folded, accents and invisible characters (zero-width spaces…) dropped."""
    folded = unicodedata.normalize("NFKD", text)
    return unicodedata.normalize("NFKC", "".join(c for c in folded if not unicodedata.combining(c)
                                                 and unicodedata.category(c) != "Cf"))


def normalised(text: str) -> str:
    """``text`` with its disguises undone (see the module's docstring): what the second reading reads."""
    if text.isascii():
        return _ascii_normalised(text)
    return _joined(_MIXED_WORD.sub(_unmix, _unmarked(text)))


def _joined(plain: str) -> str:
    """Letters spaced out ("i g n o r e") joined."""
    return _SPACED_OUT.sub(lambda m: m.group(0)[:-1].replace(" ", "").replace(".", "") + m.group(0)[-1], plain)


_MARKS = "0123456789@$"
_ASCII_MARK = re.compile(r"[0-9@$]")
_ASCII_WORD = re.compile(r"[A-Za-z0-9@$]+")
_ASCII_SPACED = re.compile(r"[A-Za-z][ .][A-Za-z][ .][A-Za-z][ .][A-Za-z]")


def _ascii_normalised(text: str) -> str:
    """The same reading of ASCII text — nearly every field of nearly every event — at a fraction of
    the cost (bench ``engine.ceiling_eps``: this check was 45% of validate + route): folding leaves
    ASCII as it is and no other script is there to read as Latin, so a word changes only when it mixes
    letters with digits (then the whole word, as :data:`_MIXED_WORD` takes it), and the spaced-out
    rewrite runs only where four spaced letters are. The three patterns are one character class or
    fixed width: linear in the standard library too, and they skip RE2's Python-level ``sub``."""
    plain = _ASCII_WORD.sub(_ascii_unmix, text) if _ASCII_MARK.search(text) else text
    return _joined(plain) if _ASCII_SPACED.search(plain) else plain


def _ascii_unmix(match: re.Match) -> str:
    word = match.group(0)
    mixed = word.strip(_MARKS) and not word.isalpha()  # letters and digits both
    return word.translate(_DIGITS_AS_LETTERS) if mixed else word


def _unmix(match) -> str:
    """A word mixing letters with digits or look-alike letters of another script reads as Latin."""
    word = match.group(0)
    latin = word.translate(_LOOKALIKES)
    return latin.translate(_DIGITS_AS_LETTERS) if _LATIN.search(latin) else word


def find(text: str) -> Finding | None:
    """The first thing in ``text`` that speaks to the model, or None."""
    for view in _readings(text):
        if not _ANY.search(view):  # one pass for every pattern; the families are asked only on a hit
            continue
        for family, pattern in _COMPILED:
            found = pattern.search(view)
            if found:
                marker = found.group(1) if pattern.groups and found.group(1) else found.group(0)
                return Finding(family=family, text=" ".join(marker.split())[:80])
    return None


def _options() -> re2.Options:
    options = re2.Options()
    options.case_sensitive = False
    options.log_errors = False  # a DFA over its memory budget falls back to the NFA: still linear, not worth a log line
    options.max_mem = 64 << 20  # room for the DFA of the one alternation of every pattern
    return options


_COMPILED = [(family, re2.compile(_unmarked(pattern), _options())) for family, patterns in PATTERNS.items()
             for pattern in patterns]
"""Written without accents, like the normalised text they also read."""

_ANY = re2.compile("|".join(f"(?:{_unmarked(pattern)})" for patterns in PATTERNS.values() for pattern in patterns),
                   _options())
"""Every pattern in one alternation: it matches where any of them does (RE2 has no backreferences),
so the texts with nothing to find — nearly all of them — cost one linear scan per reading, not one per
pattern (bench (a): about 1,000 searches per event before)."""


def _readings(text: str):
    yield text
    plain = normalised(text)
    if plain != text:
        yield plain
