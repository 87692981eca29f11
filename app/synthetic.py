"""Synthetic clinical notes with gold annotations, for training and evaluating tiny demo adapters.

Everything here is invented: names, values and sentences come from the templates and vocab
lists below, never from patients. Notes are assembled from templated sentences whose slots
are filled from those lists, and character offsets are tracked while the text is built (a
span is never searched for afterwards), so `text[start:end] == span text` by construction.

Generation is deterministic: each public function draws only from its own
`random.Random(seed)`, so the same (n, seed) gives byte-identical output on every run.

Template mini-language (kept tiny so the many sentence variants stay readable):
`{kind}` fills a slot; `{Kind}` capitalises its first character; `{kind:neg+unc}` sets
assertion flags on the entity (neg, unc, hist, fam); `{kind@key}` also records the span as
the answer to QA question `key`; `{kind^Sospett}` emits an Italian stem agreeing in gender
with the disorder that fills the slot ("Sospetta polmonite", "Sospetto ictus ischemico").
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal, TypeVar

from app.tasks.grounding import aligned_occurrences, piece_boundaries

Lang = Literal["it", "en"]
NoteType = Literal[
    "DISCHARGE_SUMMARY", "EMERGENCY_NOTE", "RADIOLOGY_REPORT", "LAB_REPORT", "OUTPATIENT_VISIT", "OPERATIVE_NOTE"
]
NOTE_TYPES: tuple[NoteType, ...] = (
    "DISCHARGE_SUMMARY",
    "EMERGENCY_NOTE",
    "RADIOLOGY_REPORT",
    "LAB_REPORT",
    "OUTPATIENT_VISIT",
    "OPERATIVE_NOTE",
)

# Mirrors the shipped manifests (adapters/ner-*.yaml); the tests check they agree, so the
# generator stays a pure function with no file I/O.
NER_ATTRIBUTES: dict[Lang, tuple[str, ...]] = {
    "it": ("negated", "uncertain", "historical", "family"),
    "en": ("negated", "uncertain"),
}
NER_LABELS = ("DISORDER", "SYMPTOM", "DRUG", "DOSAGE", "BODY_PART", "TEST")

# Bounds chosen so a tiny model can learn from the data and every output fits the schemas
# (which allow 24 entities of up to 80 characters and QA answers of up to 200).
MAX_ENTITIES = 20
MAX_ENTITY_CHARS = 60
MAX_ANSWER_CHARS = 100
MIN_NOTE_CHARS = 150
MAX_NOTE_CHARS = 900
UNANSWERABLE_SHARE = 0.2

_FLAG_NAMES = {"neg": "negated", "unc": "uncertain", "hist": "historical", "fam": "family"}

T = TypeVar("T")


# --------------------------------------------------------------------------- vocabulary


@dataclass(frozen=True)
class Disorder:
    text: str
    gender: Literal["m", "f"] = "f"  # Italian grammatical gender, for agreeing stems


@dataclass(frozen=True)
class Drug:
    name: str
    doses: tuple[str, ...]
    antibiotic: bool = False


@dataclass(frozen=True)
class BodyPart:
    name: str
    to: str  # "al ", "all'", "in the ": the preposition before it after "dolore"/"pain"
    of: str  # "del ", "dell'", "of the "


@dataclass(frozen=True)
class Lab:
    name: str
    unit: str
    low: float
    high: float
    decimals: int
    panel: Literal["cbc", "chem", "coag"]
    question: str = ""  # Italian QA question about its value


@dataclass(frozen=True)
class Imaging:
    tests: tuple[str, ...]
    part: BodyPart
    findings: tuple[Disorder, ...]


@dataclass(frozen=True)
class Surgery:
    diagnosis: Disorder
    procedure: str
    part: BodyPart


@dataclass(frozen=True)
class Exam:
    name: str
    results: tuple[str, ...]


@dataclass(frozen=True)
class Relative:
    word: str
    question: str = ""


@dataclass(frozen=True)
class NoteTemplates:
    headers: tuple[str, ...]
    leads: tuple[str, ...]  # usually the first sentence: the reason for the note
    body: tuple[str, ...]  # shuffled, a random number of them
    closings: tuple[str, ...]


@dataclass(frozen=True)
class Vocab:
    lang: Lang
    decimal: str
    acute: tuple[Disorder, ...]
    chronic: tuple[Disorder, ...]
    familial: tuple[Disorder, ...]
    symptoms: tuple[str, ...]
    fever: str
    pain: str
    drugs: tuple[Drug, ...]
    allergens: tuple[str, ...]
    sore_parts: tuple[BodyPart, ...]
    joints: tuple[BodyPart, ...]
    labs: tuple[Lab, ...]
    imaging: tuple[Imaging, ...]
    surgeries: tuple[Surgery, ...]
    exams: tuple[Exam, ...]
    relatives: tuple[Relative, ...]
    histology: str
    wards: tuple[str, ...]
    anesthesia: tuple[str, ...]
    notes: dict[NoteType, NoteTemplates]


def _d(text: str, gender: Literal["m", "f"] = "f") -> Disorder:
    return Disorder(text, gender)


def _m(text: str) -> Disorder:
    return Disorder(text, "m")


_IT_PARTS = {
    "torace": BodyPart("torace", "al ", "del "),
    "addome": BodyPart("addome", "all'", "dell'"),
    "encefalo": BodyPart("encefalo", "all'", "dell'"),
    "ginocchio destro": BodyPart("ginocchio destro", "al ", "del "),
    "ginocchio sinistro": BodyPart("ginocchio sinistro", "al ", "del "),
    "spalla destra": BodyPart("spalla destra", "alla ", "della "),
    "spalla sinistra": BodyPart("spalla sinistra", "alla ", "della "),
    "caviglia sinistra": BodyPart("caviglia sinistra", "alla ", "della "),
    "colonna lombare": BodyPart("colonna lombare", "alla ", "della "),
    "polso destro": BodyPart("polso destro", "al ", "del "),
    "anca sinistra": BodyPart("anca sinistra", "all'", "dell'"),
    "gomito sinistro": BodyPart("gomito sinistro", "al ", "del "),
    "collo": BodyPart("collo", "al ", "del "),
    "arto inferiore destro": BodyPart("arto inferiore destro", "all'", "dell'"),
    "rene destro": BodyPart("rene destro", "al ", "del "),
}


def _en_part(name: str) -> BodyPart:
    return BodyPart(name, "in the ", "of the ")


_EN_PARTS = {
    name: _en_part(name)
    for name in (
        "chest",
        "abdomen",
        "brain",
        "right knee",
        "left knee",
        "right shoulder",
        "left shoulder",
        "left ankle",
        "lumbar spine",
        "right wrist",
        "left hip",
        "left elbow",
        "neck",
        "right lower limb",
        "right kidney",
    )
}


def _parts(table: dict[str, BodyPart], *names: str) -> tuple[BodyPart, ...]:
    return tuple(table[name] for name in names)


_IT_NOTES: dict[NoteType, NoteTemplates] = {
    "DISCHARGE_SUMMARY": NoteTemplates(
        headers=(
            "Lettera di dimissione",
            "LETTERA DI DIMISSIONE - U.O. Medicina Interna",
            "Lettera di dimissione – Reparto di {Ward}",
        ),
        leads=(
            "Paziente di {age} anni ricoverato per {sym} e {sym}.",
            "Si dimette paziente di {age} anni, ricoverata per {dis@admit_dx}.",
        ),
        body=(
            "In anamnesi {chr:hist} e {chr:hist}.",
            "Anamnesi patologica remota: {chr:hist}, {chr:hist}.",
            "Nega {sym:neg} e {sym:neg}.",
            "Non segni di {dis:neg}.",
            "Durante la degenza è stata eseguita {img}, che ha evidenziato {finding}.",
            "Agli esami ematici {labs}.",
            "In terapia con {drugdose}.",
            "In passato terapia con {drug:hist}.",
            "Allergia dichiarata a {allergen}.",
            "{Rel} con {famdis:fam}.",
            "Nega familiarità per {famdis:neg+fam}.",
            "{dis:unc^Sospett}, da rivalutare al controllo.",
            "Il decorso clinico è stato regolare, con graduale ripresa dell'attività motoria.",
            "Si consiglia un controllo più frequente della pressione arteriosa a domicilio.",
        ),
        closings=(
            "Diagnosi di dimissione: {dis@discharge_dx}.",
            "Terapia alla dimissione: {drugdose}; {drugdose}.",
            "Controllo ambulatoriale tra {few} settimane.",
        ),
    ),
    "EMERGENCY_NOTE": NoteTemplates(
        headers=(
            "Verbale di Pronto Soccorso",
            "Accesso in PS del {date} – codice triage giallo",
            "PRONTO SOCCORSO - Verbale di accesso",
        ),
        leads=(
            "Giunge in PS per {sym} da {days} giorni.",
            "Paziente di {age} anni condotto dal 118 per {sym}.",
        ),
        body=(
            "Riferisce {fever} fino a {temp} °C.",
            "Lamenta {pain} {sore_to} dopo caduta accidentale.",
            "Nega {sym:neg}, nega {sym:neg}.",
            "Parametri vitali: PA {pa} mmHg, FC {fc} bpm, temperatura {temp} °C.",
            "{Exam}: {result}.",
            "Esami ematici: {labs}.",
            "{Img} negativa per {finding:neg}.",
            "{dis:unc^Sospett}.",
            "Non si esclude {dis:unc}.",
            "In PS si somministra {drugdose}.",
            "Allergia nota a {allergen}.",
            "In anamnesi {chr:hist}.",
        ),
        closings=(
            "Si ricovera in {Ward} per {dis@admit_dx}.",
            "Dimesso a domicilio con indicazione a rivalutazione da parte del medico curante.",
        ),
    ),
    "RADIOLOGY_REPORT": NoteTemplates(
        headers=(
            "{Imgh}:",
            "Referto radiologico\nEsame: {imgh}.",
            "Diagnostica per immagini – {imgh}",
        ),
        leads=("Quesito clinico: {finding:unc^sospett}.",),
        body=(
            "Si documenta {finding}.",
            "Non {finding:neg} in atto.",
            "Non evidenza di {finding:neg}.",
            "Non si può escludere {finding:unc}; si consiglia correlazione clinica.",
            "Reperto dubbio per {finding:unc}.",
            "Non altri reperti di rilievo.",
            "Confronto con precedente esame non disponibile.",
            "Esame eseguito senza e con mezzo di contrasto.",
            "L'aspetto è invariato rispetto al precedente controllo.",
            "Si consiglia controllo a distanza di {few} settimane.",
        ),
        closings=(
            "Conclusioni: {finding}.",
            "Il medico radiologo – referto firmato digitalmente.",
        ),
    ),
    "LAB_REPORT": NoteTemplates(
        headers=(
            "Esami di laboratorio",
            "Referto di laboratorio analisi – prelievo del {date}",
            "ESAMI DI LABORATORIO - Laboratorio analisi chimico-cliniche",
        ),
        leads=("Materiale: sangue venoso.",),
        body=(
            "Emocromo: {cbc}, {cbc}.",
            "Chimica clinica: {chem}, {chem}, {chem}.",
            "Coagulazione: {coag}.",
            "I valori fuori dall'intervallo di riferimento sono segnalati con *.",
            "Campione non emolizzato, accettato alle ore {hour}.",
            "Commento: reperti suggestivi di {dis:unc}.",
            "Si consiglia di ripetere il prelievo tra {days} giorni.",
            "Per l'interpretazione dei risultati è necessaria la valutazione del medico curante.",
        ),
        closings=("Referto validato dal dirigente medico di laboratorio.",),
    ),
    "OUTPATIENT_VISIT": NoteTemplates(
        headers=(
            "Visita ambulatoriale",
            "Visita ambulatoriale di controllo – Ambulatorio di Diabetologia",
            "Ambulatorio di Cardiologia – visita di controllo del {date}",
        ),
        leads=("Paziente di {age} anni in follow-up per {chr@followup_dx}.",),
        body=(
            "Riferisce buon controllo dei sintomi; nega {sym:neg}.",
            "Esame obiettivo: flessione {joint_of} limitata a {deg}°.",
            "Porta in visione esami recenti: {labs}.",
            "{Exam}: {result}.",
            "Si conferma terapia con {drugdose}.",
            "Si sospende {drug}.",
            "In passato terapia con {drug:hist}.",
            "In anamnesi {chr:hist}.",
            "{Rel} con {famdis:fam}.",
            "Si raccomanda attività fisica regolare e dieta iposodica.",
            "Si consiglia un controllo più frequente della pressione arteriosa a domicilio.",
        ),
        closings=(
            "Prossimo controllo tra {few} mesi.",
            "Si richiede {exam} prima della prossima visita.",
        ),
    ),
    "OPERATIVE_NOTE": NoteTemplates(
        headers=(
            "Verbale operatorio",
            "VERBALE OPERATORIO - Chirurgia",
            "Verbale di intervento chirurgico – sala operatoria {room}",
        ),
        leads=("Diagnosi preoperatoria: {opdis@preop_dx}.",),
        body=(
            "Intervento eseguito: {proc}.",
            "Anestesia {anest}.",
            "Paziente in decubito supino, braccio abdotto a {deg}°.",
            "Profilassi antibiotica con {abxdose}.",
            "Isolamento {opbp_of} e accurata emostasi.",
            "Perdite ematiche stimate: {ml} ml.",
            "Non complicanze intraoperatorie.",
            "Si invia il pezzo operatorio per {histo}.",
            "Sutura della cute a punti staccati.",
        ),
        closings=(
            "Terapia postoperatoria: {drugdose}.",
            "Il paziente è trasferito in reparto in condizioni stabili.",
        ),
    ),
}

_EN_NOTES: dict[NoteType, NoteTemplates] = {
    "DISCHARGE_SUMMARY": NoteTemplates(
        headers=("Discharge summary", "DISCHARGE SUMMARY - Internal Medicine", "Discharge summary – {Ward} ward"),
        leads=(
            "Patient aged {age} admitted with {sym} and {sym}.",
            "Patient aged {age} admitted for {dis@admit_dx}.",
        ),
        body=(
            "History of {chr:hist} and {chr:hist}.",
            "Past medical history: {chr:hist}, {chr:hist}.",
            "Denies {sym:neg} and {sym:neg}.",
            "No evidence of {dis:neg}.",
            "During the stay {img} showed {finding}.",
            "Blood tests: {labs}.",
            "Started on {drugdose}.",
            "Previously treated with {drug:hist}.",
            "Allergic to {allergen}.",
            "{Rel} with {famdis:fam}.",
            "Denies family history of {famdis:neg+fam}.",
            "Possible {dis:unc}, to be reassessed at follow-up.",
            "Uneventful hospital course with gradual return to full mobility.",
            "Home blood pressure monitoring is recommended.",
        ),
        closings=(
            "Discharge diagnosis: {dis@discharge_dx}.",
            "Discharge medications: {drugdose}; {drugdose}.",
            "Follow-up visit in {few} weeks.",
        ),
    ),
    "EMERGENCY_NOTE": NoteTemplates(
        headers=(
            "Emergency department note",
            "ED visit on {date} – triage level 3",
            "EMERGENCY DEPARTMENT - Physician note",
        ),
        leads=(
            "Presents to the ED with {sym} for {days} days.",
            "Patient aged {age} brought in by ambulance for {sym}.",
        ),
        body=(
            "Reports {fever} up to {temp} °C.",
            "Complains of {pain} {sore_to} after a fall.",
            "Denies {sym:neg}. Denies {sym:neg}.",
            "Vital signs: BP {pa} mmHg, HR {fc} bpm, temperature {temp} °C.",
            "{Exam}: {result}.",
            "Labs: {labs}.",
            "{Img} negative for {finding:neg}.",
            "Suspected {dis:unc}.",
            "Cannot rule out {dis:unc}.",
            "Given {drugdose} in the ED.",
            "Allergic to {allergen}.",
            "History of {chr:hist}.",
        ),
        closings=(
            "Admitted to {ward} for {dis@admit_dx}.",
            "Discharged home with advice to follow up with the primary care physician.",
        ),
    ),
    "RADIOLOGY_REPORT": NoteTemplates(
        headers=("{Imgh}:", "Radiology report\nExam: {imgh}.", "Diagnostic imaging – {imgh}"),
        leads=("Clinical question: possible {finding:unc}.",),
        body=(
            "Evidence of {finding}.",
            "No {finding:neg} is seen.",
            "No evidence of {finding:neg}.",
            "Cannot exclude {finding:unc}; clinical correlation is recommended.",
            "Equivocal finding, possibly {finding:unc}.",
            "No other significant findings.",
            "Comparison with a prior study is not available.",
            "Study performed without and with contrast.",
            "Appearance unchanged compared with the previous exam.",
            "Follow-up imaging in {few} weeks is advised.",
        ),
        closings=("Impression: {finding}.", "Electronically signed by the reporting radiologist."),
    ),
    "LAB_REPORT": NoteTemplates(
        headers=(
            "Laboratory results",
            "LABORATORY REPORT - sample collected on {date}",
            "Lab report – Clinical Chemistry",
        ),
        leads=("Sample type: venous blood.",),
        body=(
            "Complete blood count: {cbc}, {cbc}.",
            "Chemistry: {chem}, {chem}, {chem}.",
            "Coagulation: {coag}.",
            "Values outside the reference range are flagged with *.",
            "No hemolysis detected; sample received at {hour}.",
            "Comment: findings suggestive of {dis:unc}.",
            "Repeat testing is recommended in {days} days.",
            "Results must be interpreted by the treating physician.",
        ),
        closings=("Validated by the laboratory physician.",),
    ),
    "OUTPATIENT_VISIT": NoteTemplates(
        headers=(
            "Outpatient visit",
            "Outpatient follow-up visit – Diabetes clinic",
            "Cardiology clinic – follow-up visit on {date}",
        ),
        leads=("Patient aged {age} followed for {chr@followup_dx}.",),
        body=(
            "Reports good symptom control; denies {sym:neg}.",
            "Physical exam: flexion {joint_of} limited to {deg}°.",
            "Brings recent tests: {labs}.",
            "{Exam}: {result}.",
            "Continue {drugdose}.",
            "Stop {drug}.",
            "Previously treated with {drug:hist}.",
            "History of {chr:hist}.",
            "{Rel} with {famdis:fam}.",
            "Regular physical activity and a low-salt diet are recommended.",
            "Home blood pressure monitoring is recommended.",
        ),
        closings=("Next visit in {few} months.", "Please repeat {exam} before the next visit."),
    ),
    "OPERATIVE_NOTE": NoteTemplates(
        headers=("Operative note", "OPERATIVE REPORT - Surgery", "Operative report – operating room {room}"),
        leads=("Preoperative diagnosis: {opdis@preop_dx}.",),
        body=(
            "Procedure: {proc}.",
            "{Anest}.",
            "Patient positioned supine with the arm abducted at {deg}°.",
            "Antibiotic prophylaxis with {abxdose}.",
            "Dissection {opbp_of} with careful hemostasis.",
            "Estimated blood loss: {ml} mL.",
            "No intraoperative complications.",
            "Specimen sent for {histo}.",
            "Skin closed with interrupted sutures.",
        ),
        closings=(
            "Postoperative therapy: {drugdose}.",
            "The patient was transferred to the ward in stable condition.",
        ),
    ),
}

IT = Vocab(
    lang="it",
    decimal=",",
    acute=(
        _d("polmonite"),
        _m("scompenso cardiaco acuto"),
        _d("infezione delle vie urinarie"),
        _d("pielonefrite acuta"),
        _d("embolia polmonare"),
        _d("trombosi venosa profonda"),
        _d("sindrome coronarica acuta"),
        _d("pancreatite acuta"),
        _d("colecistite acuta"),
        _d("appendicite acuta"),
        _m("ictus ischemico"),
        _d("anemia sideropenica"),
        _d("broncopolmonite"),
        _d("gastroenterite acuta"),
        _d("sepsi"),
        _d("disidratazione"),
        _d("riacutizzazione di BPCO"),
        _d("crisi ipertensiva"),
        _d("insufficienza respiratoria acuta"),
    ),
    chronic=(
        _d("ipertensione arteriosa"),
        _m("diabete mellito di tipo 2"),
        _d("BPCO"),
        _d("fibrillazione atriale"),
        _m("ipotiroidismo"),
        _d("insufficienza renale cronica"),
        _d("cardiopatia ischemica"),
        _m("asma bronchiale"),
        _d("osteoporosi"),
        _d("artrite reumatoide"),
        _d("cirrosi epatica"),
        _m("morbo di Parkinson"),
        _m("infarto miocardico"),
        _d("dislipidemia"),
        _d("gotta"),
    ),
    familial=(
        _m("diabete"),
        _m("diabete mellito di tipo 2"),
        _d("ipertensione arteriosa"),
        _d("cardiopatia ischemica"),
        _d("neoplasia della mammella"),
        _d("neoplasia del colon"),
        _m("morbo di Alzheimer"),
        _m("morbo di Parkinson"),
        _d("osteoporosi"),
        _m("glaucoma"),
    ),
    symptoms=(
        "dolore toracico",
        "dispnea",
        "tosse produttiva",
        "nausea",
        "vomito",
        "cefalea",
        "astenia",
        "vertigini",
        "palpitazioni",
        "dolore addominale",
        "edemi declivi",
        "diarrea",
        "sincope",
        "disuria",
        "calo ponderale",
        "difficoltà respiratoria",
        "brividi",
        "ematuria",
        "inappetenza",
        "dolore epigastrico",
        "parestesie",
        "instabilità posturale",
    ),
    fever="febbre",
    pain="dolore",
    drugs=(
        Drug("amoxicillina", ("1 g per os ogni 8 ore", "875 mg per os due volte al giorno"), antibiotic=True),
        Drug("amoxicillina/acido clavulanico", ("1 g per os ogni 12 ore",), antibiotic=True),
        Drug("ceftriaxone", ("2 g ev/die", "1 g ev ogni 24 ore"), antibiotic=True),
        Drug("levofloxacina", ("500 mg/die per os", "750 mg ev/die"), antibiotic=True),
        Drug("piperacillina/tazobactam", ("4,5 g ev ogni 8 ore",), antibiotic=True),
        Drug("claritromicina", ("500 mg per os ogni 12 ore",), antibiotic=True),
        Drug("cefazolina", ("2 g ev", "2 g ev in dose singola"), antibiotic=True),
        Drug("ramipril", ("5 mg/die", "2,5 mg la sera")),
        Drug("furosemide", ("25 mg al mattino", "40 mg ev due volte al giorno")),
        Drug("metformina", ("500 mg due volte al giorno", "1000 mg ai pasti principali")),
        Drug("bisoprololo", ("2,5 mg/die", "1,25 mg al mattino")),
        Drug("enoxaparina", ("4000 UI sottocute/die", "6000 UI sc ogni 12 ore")),
        Drug("paracetamolo", ("1 g ev al bisogno", "1000 mg per os fino a tre volte al giorno")),
        Drug("pantoprazolo", ("40 mg/die prima di colazione", "20 mg/die")),
        Drug("atorvastatina", ("20 mg la sera", "40 mg alle ore 22")),
        Drug("levotiroxina", ("50 mcg/die", "75 µg a digiuno")),
        Drug("acido acetilsalicilico", ("100 mg/die",)),
        Drug("insulina glargine", ("12 UI sottocute la sera",)),
        Drug("apixaban", ("5 mg due volte al giorno",)),
        Drug("salbutamolo", ("2 puff al bisogno",)),
        Drug("prednisone", ("25 mg/die a scalare",)),
    ),
    allergens=("ibuprofene", "ketoprofene", "metamizolo", "codeina", "tramadolo"),
    sore_parts=_parts(
        _IT_PARTS,
        "torace",
        "addome",
        "ginocchio destro",
        "ginocchio sinistro",
        "spalla destra",
        "spalla sinistra",
        "caviglia sinistra",
        "colonna lombare",
        "polso destro",
        "anca sinistra",
        "gomito sinistro",
        "collo",
    ),
    joints=_parts(
        _IT_PARTS,
        "ginocchio destro",
        "ginocchio sinistro",
        "spalla destra",
        "spalla sinistra",
        "caviglia sinistra",
        "polso destro",
        "anca sinistra",
        "gomito sinistro",
    ),
    labs=(
        Lab("emoglobina", "g/dL", 7.5, 16.5, 1, "cbc", "Che valore ha l'emoglobina?"),
        Lab("leucociti", "×10⁹/L", 3.2, 21.0, 1, "cbc", "Quanti sono i leucociti?"),
        Lab("piastrine", "×10⁹/L", 90, 420, 0, "cbc", "Quante sono le piastrine?"),
        Lab("creatinina", "mg/dL", 0.6, 3.8, 2, "chem", "Quanto vale la creatinina?"),
        Lab("PCR", "mg/L", 1, 240, 0, "chem", "Qual è il valore della PCR?"),
        Lab("troponina", "ng/mL", 0.01, 0.8, 2, "chem", "Che valore ha la troponina?"),
        Lab("glicemia", "mg/dL", 72, 320, 0, "chem", "Quanto vale la glicemia?"),
        Lab("potassio", "mmol/L", 3.1, 5.9, 1, "chem", "Qual è il valore del potassio?"),
        Lab("sodio", "mmol/L", 128, 147, 0, "chem", "Quanto vale il sodio?"),
        Lab("ALT", "U/L", 12, 210, 0, "chem", "Che valore hanno le ALT?"),
        Lab("albumina", "g/dL", 2.5, 4.8, 1, "chem", "Quanto vale l'albumina?"),
        Lab("INR", "", 0.9, 3.6, 1, "coag", "Qual è il valore dell'INR?"),
        Lab("fibrinogeno", "mg/dL", 180, 620, 0, "coag", "Quanto vale il fibrinogeno?"),
    ),
    imaging=(
        Imaging(
            ("RX", "TC"),
            _IT_PARTS["torace"],
            (
                _d("polmonite"),
                _m("versamento pleurico"),
                _m("addensamento parenchimale"),
                _m("pneumotorace"),
                _m("edema polmonare"),
            ),
        ),
        Imaging(
            ("TC", "ecografia"),
            _IT_PARTS["addome"],
            (
                _d("colecistite acuta"),
                _d("appendicite acuta"),
                _d("pancreatite acuta"),
                _d("calcolosi della colecisti"),
                _d("steatosi epatica"),
                _m("versamento ascitico"),
            ),
        ),
        Imaging(
            ("TC", "RM"),
            _IT_PARTS["encefalo"],
            (_m("ictus ischemico"), _d("emorragia cerebrale"), _m("ematoma subdurale"), _d("leucoencefalopatia")),
        ),
        Imaging(
            ("RX", "RM", "ecografia"),
            _IT_PARTS["ginocchio destro"],
            (_d("lesione meniscale"), _d("gonartrosi"), _m("versamento articolare"), _d("frattura del piatto tibiale")),
        ),
        Imaging(
            ("ecografia doppler",),
            _IT_PARTS["arto inferiore destro"],
            (_d("trombosi venosa profonda"), _d("insufficienza venosa superficiale")),
        ),
        Imaging(
            ("ecografia", "TC"),
            _IT_PARTS["rene destro"],
            (_d("idronefrosi"), _d("calcolosi renale"), _d("cisti renale semplice")),
        ),
        Imaging(
            ("RX", "RM"),
            _IT_PARTS["colonna lombare"],
            (_d("ernia discale L4-L5"), _d("spondiloartrosi"), _d("frattura vertebrale")),
        ),
    ),
    surgeries=(
        Surgery(_d("colecistite acuta"), "colecistectomia laparoscopica", BodyPart("colecisti", "alla ", "della ")),
        Surgery(_d("appendicite acuta"), "appendicectomia laparoscopica", BodyPart("appendice", "all'", "dell'")),
        Surgery(
            _d("ernia inguinale destra"),
            "ernioplastica secondo Lichtenstein",
            BodyPart("regione inguinale destra", "alla ", "della "),
        ),
        Surgery(_d("neoplasia del colon destro"), "emicolectomia destra", BodyPart("colon destro", "al ", "del ")),
        Surgery(
            _d("frattura del collo del femore sinistro"),
            "endoprotesi d'anca a sinistra",
            BodyPart("anca sinistra", "all'", "dell'"),
        ),
        Surgery(_d("lesione del menisco mediale"), "meniscectomia artroscopica", _IT_PARTS["ginocchio destro"]),
    ),
    exams=(
        Exam("ECG", ("ritmo sinusale", "nella norma")),
        Exam("ecocardiogramma", ("frazione di eiezione conservata", "nella norma")),
        Exam("emogasanalisi", ("nei limiti della norma",)),
        Exam("esame urine", ("negativo", "nella norma")),
        Exam("spirometria", ("nella norma", "senza alterazioni significative")),
        Exam("gastroscopia", ("senza alterazioni significative",)),
    ),
    relatives=(
        Relative("madre", "Di quale patologia soffre la madre?"),
        Relative("padre", "Di quale patologia soffre il padre?"),
        Relative("fratello", "Di quale patologia soffre il fratello?"),
        Relative("sorella", "Di quale patologia soffre la sorella?"),
        Relative("nonno materno", "Di quale patologia soffriva il nonno materno?"),
    ),
    histology="esame istologico",
    wards=("Medicina Interna", "Cardiologia", "Pneumologia", "Geriatria", "Chirurgia Generale"),
    anesthesia=("generale con intubazione orotracheale", "spinale", "locoregionale con sedazione"),
    notes=_IT_NOTES,
)

EN = Vocab(
    lang="en",
    decimal=".",
    acute=tuple(
        _d(t)
        for t in (
            "pneumonia",
            "acute heart failure",
            "urinary tract infection",
            "acute pyelonephritis",
            "pulmonary embolism",
            "deep vein thrombosis",
            "acute coronary syndrome",
            "acute pancreatitis",
            "acute cholecystitis",
            "acute appendicitis",
            "ischemic stroke",
            "iron deficiency anemia",
            "bronchopneumonia",
            "acute gastroenteritis",
            "sepsis",
            "dehydration",
            "COPD exacerbation",
            "hypertensive crisis",
            "acute respiratory failure",
        )
    ),
    chronic=tuple(
        _d(t)
        for t in (
            "hypertension",
            "type 2 diabetes mellitus",
            "COPD",
            "atrial fibrillation",
            "hypothyroidism",
            "chronic kidney disease",
            "ischemic heart disease",
            "asthma",
            "osteoporosis",
            "rheumatoid arthritis",
            "liver cirrhosis",
            "Parkinson's disease",
            "myocardial infarction",
            "dyslipidemia",
            "gout",
        )
    ),
    familial=tuple(
        _d(t)
        for t in (
            "diabetes",
            "type 2 diabetes mellitus",
            "hypertension",
            "ischemic heart disease",
            "breast cancer",
            "colon cancer",
            "Alzheimer's disease",
            "Parkinson's disease",
            "osteoporosis",
            "glaucoma",
        )
    ),
    symptoms=(
        "chest pain",
        "shortness of breath",
        "productive cough",
        "nausea",
        "vomiting",
        "headache",
        "fatigue",
        "dizziness",
        "palpitations",
        "abdominal pain",
        "leg swelling",
        "diarrhea",
        "syncope",
        "dysuria",
        "weight loss",
        "chills",
        "hematuria",
        "loss of appetite",
        "epigastric pain",
        "tingling",
        "unsteady gait",
    ),
    fever="fever",
    pain="pain",
    drugs=(
        Drug("amoxicillin", ("500 mg orally every 8 hours", "1 g three times daily"), antibiotic=True),
        Drug("amoxicillin-clavulanate", ("875 mg twice daily",), antibiotic=True),
        Drug("ceftriaxone", ("2 g IV daily", "1 g IV every 24 hours"), antibiotic=True),
        Drug("levofloxacin", ("500 mg orally once daily", "750 mg IV daily"), antibiotic=True),
        Drug("piperacillin-tazobactam", ("4.5 g IV every 8 hours",), antibiotic=True),
        Drug("clarithromycin", ("500 mg every 12 hours",), antibiotic=True),
        Drug("cefazolin", ("2 g IV", "2 g IV single dose"), antibiotic=True),
        Drug("lisinopril", ("10 mg daily", "5 mg once daily")),
        Drug("metoprolol", ("25 mg twice daily", "50 mg daily")),
        Drug("furosemide", ("40 mg IV twice daily", "20 mg every morning")),
        Drug("metformin", ("500 mg twice daily", "1000 mg with meals")),
        Drug("enoxaparin", ("40 mg subcutaneously daily",)),
        Drug("acetaminophen", ("1 g every 6 hours as needed",)),
        Drug("pantoprazole", ("40 mg daily before breakfast",)),
        Drug("atorvastatin", ("40 mg at bedtime", "20 mg daily")),
        Drug("levothyroxine", ("50 mcg daily", "75 µg on an empty stomach")),
        Drug("aspirin", ("81 mg daily",)),
        Drug("insulin glargine", ("12 units at bedtime",)),
        Drug("apixaban", ("5 mg twice daily",)),
        Drug("albuterol", ("2 puffs every 4 hours as needed",)),
        Drug("prednisone", ("40 mg daily, tapering",)),
    ),
    allergens=("ibuprofen", "naproxen", "metamizole", "codeine", "tramadol"),
    sore_parts=_parts(
        _EN_PARTS,
        "chest",
        "abdomen",
        "right knee",
        "left knee",
        "right shoulder",
        "left shoulder",
        "left ankle",
        "lumbar spine",
        "right wrist",
        "left hip",
        "left elbow",
        "neck",
    ),
    joints=_parts(
        _EN_PARTS,
        "right knee",
        "left knee",
        "right shoulder",
        "left shoulder",
        "left ankle",
        "right wrist",
        "left hip",
        "left elbow",
    ),
    labs=(
        Lab("hemoglobin", "g/dL", 7.5, 16.5, 1, "cbc"),
        Lab("WBC", "×10⁹/L", 3.2, 21.0, 1, "cbc"),
        Lab("platelets", "×10⁹/L", 90, 420, 0, "cbc"),
        Lab("creatinine", "mg/dL", 0.6, 3.8, 2, "chem"),
        Lab("CRP", "mg/L", 1, 240, 0, "chem"),
        Lab("troponin", "ng/mL", 0.01, 0.8, 2, "chem"),
        Lab("glucose", "mg/dL", 72, 320, 0, "chem"),
        Lab("potassium", "mmol/L", 3.1, 5.9, 1, "chem"),
        Lab("sodium", "mmol/L", 128, 147, 0, "chem"),
        Lab("ALT", "U/L", 12, 210, 0, "chem"),
        Lab("albumin", "g/dL", 2.5, 4.8, 1, "chem"),
        Lab("INR", "", 0.9, 3.6, 1, "coag"),
        Lab("fibrinogen", "mg/dL", 180, 620, 0, "coag"),
    ),
    imaging=(
        Imaging(
            ("X-ray", "CT"),
            _EN_PARTS["chest"],
            tuple(_d(t) for t in ("pneumonia", "pleural effusion", "consolidation", "pneumothorax", "pulmonary edema")),
        ),
        Imaging(
            ("CT", "ultrasound"),
            _EN_PARTS["abdomen"],
            tuple(
                _d(t)
                for t in (
                    "acute cholecystitis",
                    "acute appendicitis",
                    "acute pancreatitis",
                    "gallstones",
                    "hepatic steatosis",
                    "ascites",
                )
            ),
        ),
        Imaging(
            ("CT", "MRI"),
            _EN_PARTS["brain"],
            tuple(
                _d(t)
                for t in ("ischemic stroke", "intracerebral hemorrhage", "subdural hematoma", "small vessel disease")
            ),
        ),
        Imaging(
            ("X-ray", "MRI", "ultrasound"),
            _EN_PARTS["right knee"],
            tuple(_d(t) for t in ("meniscal tear", "knee osteoarthritis", "joint effusion", "tibial plateau fracture")),
        ),
        Imaging(
            ("Doppler ultrasound",),
            _EN_PARTS["right lower limb"],
            (_d("deep vein thrombosis"), _d("superficial venous insufficiency")),
        ),
        Imaging(
            ("ultrasound", "CT"),
            _EN_PARTS["right kidney"],
            (_d("hydronephrosis"), _d("kidney stones"), _d("simple renal cyst")),
        ),
        Imaging(
            ("X-ray", "MRI"),
            _EN_PARTS["lumbar spine"],
            (_d("L4-L5 disc herniation"), _d("spondylosis"), _d("vertebral fracture")),
        ),
    ),
    surgeries=(
        Surgery(_d("acute cholecystitis"), "laparoscopic cholecystectomy", _en_part("gallbladder")),
        Surgery(_d("acute appendicitis"), "laparoscopic appendectomy", _en_part("appendix")),
        Surgery(_d("right inguinal hernia"), "Lichtenstein hernia repair", _en_part("right groin")),
        Surgery(_d("right colon cancer"), "right hemicolectomy", _en_part("right colon")),
        Surgery(_d("left femoral neck fracture"), "left hip hemiarthroplasty", _EN_PARTS["left hip"]),
        Surgery(_d("medial meniscus tear"), "arthroscopic meniscectomy", _EN_PARTS["right knee"]),
    ),
    exams=(
        Exam("ECG", ("sinus rhythm", "normal")),
        Exam("echocardiogram", ("preserved ejection fraction", "normal")),
        Exam("arterial blood gas", ("within normal limits",)),
        Exam("urinalysis", ("negative",)),
        Exam("spirometry", ("within normal limits",)),
        Exam("upper endoscopy", ("unremarkable",)),
    ),
    relatives=tuple(Relative(w) for w in ("mother", "father", "brother", "sister", "maternal grandfather")),
    histology="histological examination",
    wards=("internal medicine", "cardiology", "pulmonology", "geriatrics", "general surgery"),
    anesthesia=("general anesthesia with endotracheal intubation", "spinal anesthesia", "regional anesthesia"),
    notes=_EN_NOTES,
)

VOCABS: dict[Lang, Vocab] = {"it": IT, "en": EN}

# Italian QA questions per fact key; parameterised keys (lab:, dose:, family:) are built
# from the vocab in `_question`.
_QUESTIONS: dict[str, tuple[str, ...]] = {
    "antibiotic": ("Quale antibiotico assume il paziente?", "Quale antibiotico è stato somministrato?"),
    "discharge_dx": ("Qual è la diagnosi di dimissione?", "Con quale diagnosi è stato dimesso il paziente?"),
    "admit_dx": ("Per quale patologia viene ricoverato il paziente?", "Qual è il motivo del ricovero?"),
    "preop_dx": ("Qual è la diagnosi preoperatoria?",),
    "followup_dx": ("Per quale patologia è seguito il paziente in ambulatorio?",),
    "suspected": ("Quale diagnosi viene sospettata?", "Quale patologia è ipotizzata?"),
    "allergy": ("A quale farmaco è allergico il paziente?",),
    "imaging": ("Quale esame di imaging è stato eseguito?",),
    "neg_symptom": ("Quale sintomo nega il paziente?",),
}


# --------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    text: str
    label: str
    flags: frozenset[str] = frozenset()  # attribute names that are true


@dataclass
class Note:
    kind: NoteType
    text: str
    spans: list[Span]
    facts: dict[str, Span]  # QA key -> its unambiguous answer span (label holds the key)
    mentions: set[str]  # QA keys the note says anything about: never asked as unanswerable


@dataclass
class _Sentence:
    """One rendered sentence; offsets are relative to its own start."""

    text: str = ""
    spans: list[Span] = field(default_factory=list)
    facts: list[Span] = field(default_factory=list)  # label holds the QA key
    mentions: set[str] = field(default_factory=set)
    cap_next: bool = False

    def add(self, piece: str) -> tuple[int, int]:
        if self.cap_next and piece:
            piece = piece[0].upper() + piece[1:]
            self.cap_next = False
        start = len(self.text)
        self.text += piece
        return start, len(self.text)

    def entity(self, piece: str, label: str, flags: frozenset[str]) -> tuple[int, int]:
        start, end = self.add(piece)
        self.spans.append(Span(start, end, self.text[start:end], label, flags))
        return start, end

    def fact(self, key: str, start: int, end: int) -> None:
        self.facts.append(Span(start, end, self.text[start:end], key))
        self.mentions.add(key)


class _Skip(Exception):
    """A slot cannot be filled sensibly in this note; drop the sentence."""


@dataclass
class _Ctx:
    """Per-note state: what was already said, and the scenario sentences must agree on."""

    rng: random.Random
    vocab: Vocab
    used: set[str] = field(default_factory=set)
    imaging: Imaging | None = None
    surgery: Surgery | None = None
    exam: Exam | None = None
    relative: Relative | None = None  # per sentence: "{Rel} con {famdis:fam}"

    def pick(self, items: Sequence[T], key: Callable[[T], str]) -> T:
        # Only items not yet used in this note: "nega dispnea" next to "riferisce dispnea"
        # would teach the model contradictions. Nothing left: the sentence is dropped.
        fresh = [item for item in items if key(item) not in self.used]
        if not fresh:
            raise _Skip
        choice = self.rng.choice(fresh)
        self.used.add(key(choice))
        return choice


@dataclass(frozen=True)
class _Slot:
    kind: str
    cap: bool
    flags: frozenset[str]
    fact: str | None
    stem: str | None


_SLOT = re.compile(r"\{(?P<kind>[A-Za-z_]+)(?::(?P<flags>[a-z+]+))?(?:@(?P<fact>[a-z_]+))?(?:\^(?P<stem>[^}]+))?\}")


@cache
def _parse(template: str) -> tuple[str | _Slot, ...]:
    tokens: list[str | _Slot] = []
    pos = 0
    for match in _SLOT.finditer(template):
        if match.start() > pos:
            tokens.append(template[pos : match.start()])
        kind = match["kind"]
        flags = frozenset(_FLAG_NAMES[f] for f in (match["flags"] or "").split("+") if f)
        if kind.lower() not in _HANDLERS:
            raise ValueError(f"unknown slot {kind!r} in template {template!r}")
        tokens.append(_Slot(kind.lower(), kind[0].isupper(), flags, match["fact"], match["stem"]))
        pos = match.end()
    if pos < len(template):
        tokens.append(template[pos:])
    return tuple(tokens)


def _render(template: str, ctx: _Ctx) -> _Sentence | None:
    """Fill a template's slots, or None if one cannot be filled in this note."""
    try:
        return _fill(template, ctx)
    except _Skip:
        return None


def _fill(template: str, ctx: _Ctx) -> _Sentence:
    sentence = _Sentence()
    ctx.relative = None
    for token in _parse(template):
        if isinstance(token, str):
            sentence.add(token)
        else:
            sentence.cap_next = token.cap
            _HANDLERS[token.kind](sentence, ctx, token)
            sentence.cap_next = False
    return sentence


def _number(ctx: _Ctx, low: float, high: float, decimals: int) -> str:
    # Integers scaled by 10**decimals: no float formatting surprises, same digits everywhere.
    scale = 10**decimals
    value = ctx.rng.randint(round(low * scale), round(high * scale))
    if decimals == 0:
        return str(value)
    whole, frac = divmod(value, scale)
    return f"{whole}{ctx.vocab.decimal}{frac:0{decimals}d}"


def _disorder(s: _Sentence, ctx: _Ctx, slot: _Slot, disorder: Disorder) -> None:
    if slot.stem:
        s.add(slot.stem + ("a " if disorder.gender == "f" else "o "))
    start, end = s.entity(disorder.text, "DISORDER", slot.flags)
    if "uncertain" in slot.flags:
        s.fact("suspected", start, end)
    if ctx.relative is not None and "family" in slot.flags and "negated" not in slot.flags:
        s.fact(f"family:{ctx.relative.word}", start, end)
    if slot.fact:
        s.fact(slot.fact, start, end)


def _text_of(d: Disorder) -> str:
    return d.text


def _slot_dis(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    _disorder(s, ctx, slot, ctx.pick(ctx.vocab.acute, _text_of))


def _slot_chr(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    _disorder(s, ctx, slot, ctx.pick(ctx.vocab.chronic, _text_of))


def _slot_famdis(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    _disorder(s, ctx, slot, ctx.pick(ctx.vocab.familial, _text_of))


def _scenario(ctx: _Ctx) -> Imaging:
    if ctx.imaging is None:
        ctx.imaging = ctx.rng.choice(ctx.vocab.imaging)
    return ctx.imaging


def _slot_finding(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    # Findings fit the region last imaged in this note (a brain bleed on a knee MRI would be
    # noise a small model cannot learn from).
    _disorder(s, ctx, slot, ctx.pick(_scenario(ctx).findings, _text_of))


def _imaging(s: _Sentence, ctx: _Ctx, slot: _Slot, with_prep: bool) -> None:
    ctx.imaging = ctx.rng.choice(ctx.vocab.imaging)
    test = ctx.rng.choice(ctx.imaging.tests)
    part = ctx.imaging.part
    start, _ = s.entity(test, "TEST", slot.flags)
    s.add(" " + (part.of if with_prep else ""))
    _, end = s.entity(part.name, "BODY_PART", frozenset())
    s.fact("imaging", start, end)


def _slot_img(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    _imaging(s, ctx, slot, with_prep=True)


def _slot_imgh(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    _imaging(s, ctx, slot, with_prep=False)


def _surgery(ctx: _Ctx) -> Surgery:
    if ctx.surgery is None:
        ctx.surgery = ctx.rng.choice(ctx.vocab.surgeries)
    return ctx.surgery


def _slot_opdis(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    _disorder(s, ctx, slot, _surgery(ctx).diagnosis)


def _slot_proc(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    s.add(_surgery(ctx).procedure)  # no PROCEDURE label in the shipped tasks: plain text


def _slot_opbp_of(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    part = _surgery(ctx).part
    s.add(part.of)
    s.entity(part.name, "BODY_PART", slot.flags)


def _slot_sym(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    start, end = s.entity(ctx.pick(ctx.vocab.symptoms, str), "SYMPTOM", slot.flags)
    if "negated" in slot.flags:
        s.fact("neg_symptom", start, end)


def _slot_fever(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    ctx.used.add(ctx.vocab.fever)
    s.entity(ctx.vocab.fever, "SYMPTOM", slot.flags)


def _slot_pain(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    s.entity(ctx.vocab.pain, "SYMPTOM", slot.flags)


def _slot_sore_to(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    part = ctx.pick(ctx.vocab.sore_parts, lambda p: p.name)
    s.add(part.to)
    s.entity(part.name, "BODY_PART", slot.flags)


def _slot_joint_of(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    part = ctx.pick(ctx.vocab.joints, lambda p: p.name)
    s.add(part.of)
    s.entity(part.name, "BODY_PART", slot.flags)


def _drug(s: _Sentence, ctx: _Ctx, slot: _Slot, drug: Drug, with_dose: bool) -> None:
    start, end = s.entity(drug.name, "DRUG", slot.flags)
    s.mentions.add(f"dose:{drug.name}")
    if drug.antibiotic:
        s.mentions.add("antibiotic")
        # Only a current prescription answers "Quale antibiotico assume il paziente?", not
        # "In passato terapia con ..." or "Si sospende ...".
        if with_dose and not slot.flags:
            s.fact("antibiotic", start, end)
    if with_dose:
        s.add(" ")
        start, end = s.entity(ctx.rng.choice(drug.doses), "DOSAGE", slot.flags)
        s.fact(f"dose:{drug.name}", start, end)


def _drug_name(d: Drug) -> str:
    return d.name


def _slot_drugdose(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    _drug(s, ctx, slot, ctx.pick(ctx.vocab.drugs, _drug_name), with_dose=True)


def _slot_abxdose(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    antibiotics = [d for d in ctx.vocab.drugs if d.antibiotic]
    _drug(s, ctx, slot, ctx.pick(antibiotics, _drug_name), with_dose=True)


def _slot_drug(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    _drug(s, ctx, slot, ctx.pick(ctx.vocab.drugs, _drug_name), with_dose=False)


def _slot_allergen(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    start, end = s.entity(ctx.pick(ctx.vocab.allergens, str), "DRUG", slot.flags)
    s.fact("allergy", start, end)


def _lab(s: _Sentence, ctx: _Ctx, slot: _Slot, labs: Sequence[Lab]) -> None:
    lab = ctx.pick(labs, lambda x: x.name)
    value = _number(ctx, lab.low, lab.high, lab.decimals) + (f" {lab.unit}" if lab.unit else "")
    # One TEST span covers name and value ("emoglobina 10,2 g/dL": the label includes lab
    # values); the QA answer is the value alone.
    _, end = s.entity(f"{lab.name} {value}", "TEST", slot.flags)
    s.fact(f"lab:{lab.name}", end - len(value), end)


def _panel(ctx: _Ctx, panel: str) -> list[Lab]:
    return [lab for lab in ctx.vocab.labs if lab.panel == panel]


def _slot_cbc(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    _lab(s, ctx, slot, _panel(ctx, "cbc"))


def _slot_chem(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    _lab(s, ctx, slot, _panel(ctx, "chem"))


def _slot_coag(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    _lab(s, ctx, slot, _panel(ctx, "coag"))


def _slot_labs(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    count = ctx.rng.randint(2, 4)
    for i in range(count):
        if i:
            s.add(", " if i < count - 1 else (" e " if ctx.vocab.lang == "it" else " and "))
        _lab(s, ctx, slot, ctx.vocab.labs)


def _slot_exam(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    ctx.exam = ctx.pick(ctx.vocab.exams, lambda e: e.name)
    s.entity(ctx.exam.name, "TEST", slot.flags)


def _slot_result(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    exam = ctx.exam or ctx.rng.choice(ctx.vocab.exams)
    s.add(ctx.rng.choice(exam.results))


def _slot_histo(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    s.entity(ctx.vocab.histology, "TEST", slot.flags)


def _slot_rel(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
    ctx.relative = ctx.pick(ctx.vocab.relatives, lambda r: r.word)
    s.add(ctx.relative.word)
    s.mentions.add(f"family:{ctx.relative.word}")


def _plain(make: Callable[[_Ctx], str]) -> Callable[[_Sentence, _Ctx, _Slot], None]:
    def handler(s: _Sentence, ctx: _Ctx, slot: _Slot) -> None:
        s.add(make(ctx))

    return handler


def _date(ctx: _Ctx) -> str:
    return f"{ctx.rng.randint(1, 28):02d}/{ctx.rng.randint(1, 12):02d}/{ctx.rng.randint(2019, 2025)}"


def _hour(ctx: _Ctx) -> str:
    return f"{ctx.rng.randint(7, 18):02d}:{ctx.rng.choice(('00', '15', '30', '45'))}"


_HANDLERS: dict[str, Callable[[_Sentence, _Ctx, _Slot], None]] = {
    "dis": _slot_dis,
    "chr": _slot_chr,
    "famdis": _slot_famdis,
    "finding": _slot_finding,
    "img": _slot_img,
    "imgh": _slot_imgh,
    "opdis": _slot_opdis,
    "proc": _slot_proc,
    "opbp_of": _slot_opbp_of,
    "sym": _slot_sym,
    "fever": _slot_fever,
    "pain": _slot_pain,
    "sore_to": _slot_sore_to,
    "joint_of": _slot_joint_of,
    "drugdose": _slot_drugdose,
    "abxdose": _slot_abxdose,
    "drug": _slot_drug,
    "allergen": _slot_allergen,
    "cbc": _slot_cbc,
    "chem": _slot_chem,
    "coag": _slot_coag,
    "labs": _slot_labs,
    "exam": _slot_exam,
    "result": _slot_result,
    "histo": _slot_histo,
    "rel": _slot_rel,
    "age": _plain(lambda c: str(c.rng.randint(25, 92))),
    "days": _plain(lambda c: str(c.rng.randint(2, 10))),
    "few": _plain(lambda c: str(c.rng.randint(2, 6))),
    "temp": _plain(lambda c: _number(c, 37.5, 39.9, 1)),
    "pa": _plain(lambda c: f"{c.rng.randint(100, 180)}/{c.rng.randint(60, 100)}"),
    "fc": _plain(lambda c: str(c.rng.randint(55, 125))),
    "deg": _plain(lambda c: str(c.rng.choice((30, 45, 60, 90, 110)))),
    "ml": _plain(lambda c: str(10 * c.rng.randint(2, 40))),
    "room": _plain(lambda c: str(c.rng.randint(1, 8))),
    "date": _plain(_date),
    "hour": _plain(_hour),
    "ward": _plain(lambda c: c.rng.choice(c.vocab.wards)),
    "anest": _plain(lambda c: c.rng.choice(c.vocab.anesthesia)),
}


# --------------------------------------------------------------------------- note assembly


@dataclass
class _NoteBuilder:
    text: str = ""
    spans: list[Span] = field(default_factory=list)
    facts: list[Span] = field(default_factory=list)
    mentions: set[str] = field(default_factory=set)

    def try_append(self, sentence: _Sentence | None, sep: str) -> bool:
        """Append unless the note would break a bound or a span could not be grounded."""
        if sentence is None:
            return False
        sep = sep if self.text else ""
        text = self.text + sep + sentence.text
        if len(text) > MAX_NOTE_CHARS or len(self.spans) + len(sentence.spans) > MAX_ENTITIES:
            return False
        shift = len(self.text) + len(sep)
        moved = [Span(sp.start + shift, sp.end + shift, sp.text, sp.label, sp.flags) for sp in sentence.spans]
        spans = self.spans + moved
        if not _groundable(text, spans, len(self.spans)):
            return False
        self.text = text
        self.spans = spans
        self.facts += [Span(f.start + shift, f.end + shift, f.text, f.label) for f in sentence.facts]
        self.mentions |= sentence.mentions
        return True


def _groundable(text: str, spans: Sequence[Span], first_new: int) -> bool:
    """The service grounds the k-th emitted (text, label) on the k-th aligned occurrence of
    the text (app.tasks.grounding); gold spans must sit exactly there, or a perfect model would be
    scored wrong. E.g. "dolore" after "dolore toracico" would ground inside the earlier span.
    Spans before `first_new` were checked already: text appended after a whitespace
    separator cannot move an earlier occurrence.
    """
    bounds = piece_boundaries(text)
    seen: dict[tuple[str, str], int] = {}
    for i, span in enumerate(spans):
        k = seen.get((span.text, span.label), 0)
        seen[(span.text, span.label)] = k + 1
        if i < first_new:
            continue
        occurrences = aligned_occurrences(text, span.text, bounds)
        if k >= len(occurrences) or occurrences[k] != span.start:
            return False
    return True


def compose_note(kind: NoteType, vocab: Vocab, rng: random.Random) -> Note:
    """One note: a header, 3–8 sentences in random order (usually led by the reason for the
    note), usually a closing line."""
    ctx = _Ctx(rng, vocab)
    templates = vocab.notes[kind]
    builder = _NoteBuilder()
    builder.try_append(_render(rng.choice(templates.headers), ctx), "")
    order = list(templates.body)
    rng.shuffle(order)
    wanted = rng.randint(3, 8)
    chosen, spare = order[:wanted], order[wanted:]
    if rng.random() < 0.8:
        chosen = [rng.choice(templates.leads), *chosen[:-1]]
    closing = rng.choice(templates.closings) if rng.random() < 0.7 else None

    for i, template in enumerate(chosen):
        # The body starts on a new line; later sentences mostly run on, a few start a line.
        builder.try_append(_render(template, ctx), "\n" if i == 0 else rng.choice((" ", " ", " ", "\n")))
    # Top up short notes from the unused templates so every note reaches MIN_NOTE_CHARS.
    while len(builder.text) < MIN_NOTE_CHARS and spare:
        builder.try_append(_render(spare.pop(), ctx), " ")
    if closing is not None:
        builder.try_append(_render(closing, ctx), rng.choice((" ", "\n")))
    return Note(kind, builder.text, builder.spans, _unambiguous(builder), builder.mentions)


def _unambiguous(builder: _NoteBuilder) -> dict[str, Span]:
    """QA answers: keys stated exactly once, whose text first occurs right at the answer
    (the service grounds an answer on its first aligned occurrence)."""
    counts: dict[str, int] = {}
    for f in builder.facts:
        counts[f.label] = counts.get(f.label, 0) + 1
    bounds = piece_boundaries(builder.text)
    facts: dict[str, Span] = {}
    for f in builder.facts:
        if counts[f.label] != 1 or len(f.text) > MAX_ANSWER_CHARS:
            continue
        occurrences = aligned_occurrences(builder.text, f.text, bounds)
        if occurrences and occurrences[0] == f.start:
            facts[f.label] = f
    return facts


# --------------------------------------------------------------------------- public API


def _attributes(lang: Lang, flags: frozenset[str]) -> dict[str, bool]:
    return {name: name in flags for name in NER_ATTRIBUTES[lang]}


def ner_examples(lang: Literal["it", "en"], n: int, seed: int) -> list[dict[str, Any]]:
    """NER notes: {"id", "text", "entities": [{"start", "end", "text", "label", "attributes"}]}."""
    rng = random.Random(seed)
    vocab = VOCABS[lang]
    # Weighted toward the discharge and emergency notes the NER manifests describe.
    weights = (3, 3, 1, 1, 2, 1)
    rows: list[dict[str, Any]] = []
    for i in range(n):
        kind = rng.choices(NOTE_TYPES, weights)[0]
        note = compose_note(kind, vocab, rng)
        entities = [
            {"start": s.start, "end": s.end, "text": s.text, "label": s.label, "attributes": _attributes(lang, s.flags)}
            for s in note.spans
        ]
        rows.append({"id": f"{lang}-ner-{i:06d}", "text": note.text, "entities": entities})
    return rows


def _question(key: str, vocab: Vocab, rng: random.Random) -> str:
    kind, _, arg = key.partition(":")
    if kind == "lab":
        return next(lab.question for lab in vocab.labs if lab.name == arg)
    if kind == "family":
        return next(rel.question for rel in vocab.relatives if rel.word == arg)
    if kind == "dose":
        return rng.choice((f"Qual è la posologia di {arg}?", f"Quale dose di {arg} è prescritta?"))
    return rng.choice(_QUESTIONS[key])


def _question_keys(vocab: Vocab) -> list[str]:
    return [
        *_QUESTIONS,
        *(f"lab:{lab.name}" for lab in vocab.labs),
        *(f"family:{rel.word}" for rel in vocab.relatives),
        *(f"dose:{drug.name}" for drug in vocab.drugs),
    ]


def qa_examples(n: int, seed: int) -> list[dict[str, Any]]:
    """Italian extractive QA: {"id", "context", "question", "answer": {"start", "end", "text"} | None}."""
    rng = random.Random(seed)
    # An exact share (not a coin per item) so even small sets hold both kinds.
    unanswerable = set(rng.sample(range(n), round(n * UNANSWERABLE_SHARE)))
    keys = _question_keys(IT)
    rows: list[dict[str, Any]] = []
    for i in range(n):
        while True:
            note = compose_note(rng.choice(NOTE_TYPES), IT, rng)
            # Unanswerable: ask about something the note never mentions at all, so "null" is
            # the only right answer (not merely an ambiguous one).
            absent = [k for k in keys if k not in note.mentions]
            if i in unanswerable and absent:
                key = rng.choice(absent)
                answer: dict[str, Any] | None = None
                break
            if i not in unanswerable and note.facts:
                # Pick the kind of question first (lab, dose, imaging, ...), then the key, so
                # that common facts such as the imaging test do not crowd out the rest.
                kinds = sorted({k.partition(":")[0] for k in note.facts})
                kind = rng.choice(kinds)
                key = rng.choice([k for k in note.facts if k.partition(":")[0] == kind])
                fact = note.facts[key]
                answer = {"start": fact.start, "end": fact.end, "text": fact.text}
                break
        rows.append(
            {"id": f"it-qa-{i:06d}", "context": note.text, "question": _question(key, IT, rng), "answer": answer}
        )
    return rows


def classification_examples(n: int, seed: int) -> list[dict[str, Any]]:
    """Italian note-type classification: {"id", "text", "labels": [one label]}, balanced."""
    rng = random.Random(seed)
    kinds = [NOTE_TYPES[i % len(NOTE_TYPES)] for i in range(n)]
    rng.shuffle(kinds)
    return [
        {"id": f"it-cls-{i:06d}", "text": compose_note(kind, IT, rng).text, "labels": [kind]}
        for i, kind in enumerate(kinds)
    ]


def examples_for_task(task_name: str, n: int, seed: int) -> list[dict[str, Any]]:
    """Examples for one of the shipped tasks, by manifest name."""
    if task_name == "ner-it-clinical":
        return ner_examples("it", n, seed)
    if task_name == "ner-en-clinical":
        return ner_examples("en", n, seed)
    if task_name == "qa-it-clinical":
        return qa_examples(n, seed)
    if task_name == "classify-it-note-type":
        return classification_examples(n, seed)
    raise ValueError(f"no synthetic generator for task {task_name!r}")


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> int:
    """Write one JSON object per line (UTF-8, non-ASCII kept as is); return the row count."""
    count = 0
    with path.open("w", encoding="utf-8", newline="\n") as out:
        for row in rows:
            out.write(json.dumps(dict(row), ensure_ascii=False) + "\n")
            count += 1
    return count
