"""The invented world synthetic notes are written from: vocabularies, sentence templates and
question phrasings, in Italian and English. Nothing here comes from patients.

Template mini-language (kept tiny so the many sentence variants stay readable):
`{kind}` fills a slot; `{Kind}` capitalises its first character; `{kind:neg+unc}` sets
assertion flags on the entity (neg, unc, hist, fam); `{kind@key}` also records the span as
the answer to QA question `key`; `{kind^Sospett}` emits an Italian stem agreeing in gender
with the disorder that fills the slot ("Sospetta polmonite", "Sospetto ictus ischemico").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
# from the vocab (synthetic.World.question).
QUESTIONS: dict[str, tuple[str, ...]] = {
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
