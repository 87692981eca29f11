"""The invented world medication notes are written from, in Italian and English: drugs with
the doses, routes and frequencies that are plausible for them, durations, and the plain
sentences around a therapy. Nothing here comes from patients.

Context sentences, headers and closings hold no drug, dose, route, frequency or duration
(tests check it against these lists): an unannotated "la sera" before a FREQUENCY "la sera"
would take the service's grounding of that span.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Medication:
    name: str
    doses: tuple[str, ...]
    routes: tuple[str, ...]
    frequencies: tuple[str, ...]
    course: bool = False  # given for a set time (antibiotics, steroids): a duration fits


@dataclass(frozen=True)
class MedVocab:
    lang: str
    headers: tuple[str, ...]
    contexts: tuple[str, ...]  # diagnosis and course, no medication content
    list_titles: tuple[str, ...]  # "Terapia alla dimissione:"
    closings: tuple[str, ...]
    medications: tuple[Medication, ...]
    durations: tuple[str, ...]
    open_ended: tuple[str, ...]  # "fino a nuova indicazione": plain text, not a DURATION
    prescribe: tuple[str, ...]  # narrative templates with one "{m}" (a drug with attributes)
    prescribe_two: tuple[str, ...]  # two "{m}"
    stop: tuple[str, ...]  # one "{d}" (a bare drug, no relations)
    stop_reasons: tuple[str, ...]
    of: str  # between a leading dose and its drug: "1 g di amoxicillina"


# Frequency groups, shared by drugs given on the same schedule.
_IT_Q8 = ("ogni 8 ore", "tre volte al giorno")
_IT_Q12 = ("ogni 12 ore", "due volte al giorno")
_IT_DAILY = ("una volta al giorno", "1 volta/die")
_IT_MORNING = ("la mattina", "al mattino")

IT_MED = MedVocab(
    lang="it",
    headers=(
        "Lettera di dimissione - U.O. Medicina Interna",
        "Lettera di dimissione - U.O. Geriatria",
        "Lettera di dimissione - U.O. Cardiologia",
        "Lettera di dimissione - U.O. Pneumologia",
        "Relazione clinica di dimissione - Medicina Generale",
        "Lettera di dimissione - U.O. Malattie Infettive",
        "Lettera di dimissione - U.O. Chirurgia Generale",
    ),
    contexts=(
        "Paziente ricoverato per polmonite comunitaria del lobo inferiore destro.",
        "Ricovero per scompenso cardiaco acuto in cardiopatia ischemica.",
        "Giunge in Pronto Soccorso per dispnea ingravescente e tosse produttiva.",
        "Diagnosi di dimissione: infezione delle vie urinarie complicata.",
        "Il decorso clinico è stato regolare, con progressivo miglioramento degli indici di flogosi.",
        "Apiretico dalla terza giornata di ricovero.",
        "Durante la degenza buon controllo dei valori pressori.",
        "Diagnosi di dimissione: riacutizzazione di broncopneumopatia cronica ostruttiva.",
        "Ricoverata per fibrillazione atriale ad elevata risposta ventricolare.",
        "Il paziente è stato sottoposto a ecocardiogramma, che ha mostrato una frazione di eiezione ridotta.",
        "Gli esami ematochimici di controllo mostrano una funzione renale stabile.",
        "Paziente diabetico con scarso compenso glicemico all'ingresso.",
        "Ricovero per cellulite dell'arto inferiore sinistro.",
        "Si è osservata una progressiva riduzione degli edemi declivi.",
        "Diagnosi di dimissione: trombosi venosa profonda della vena femorale.",
        "Alla dimissione il paziente è vigile, orientato e collaborante.",
        "Condizioni generali buone, alvo e diuresi regolari.",
        "Ricoverata per colecistite acuta, trattata in modo conservativo.",
        "Episodio di ipoglicemia in seconda giornata, risolto.",
        "Il quadro radiologico di controllo documenta una netta riduzione dell'addensamento.",
        "Riferita buona tolleranza all'alimentazione orale.",
    ),
    list_titles=("Terapia alla dimissione:", "Terapia domiciliare consigliata:", "Terapia:"),
    closings=(
        "Si raccomanda controllo presso il medico curante.",
        "Controllo ambulatoriale con esami ematochimici come da appuntamento.",
        "Si consiglia dieta iposodica e attività fisica moderata.",
        "Rivalutazione clinica presso il nostro ambulatorio.",
        "Si raccomanda di rivolgersi al Pronto Soccorso in caso di peggioramento.",
        "Si consiglia monitoraggio domiciliare della pressione arteriosa.",
        "Si allega copia degli esami eseguiti durante la degenza.",
        "Restiamo a disposizione per eventuali chiarimenti.",
    ),
    medications=(
        Medication("amoxicillina", ("1 g", "875 mg", "500 mg"), ("per os",), (*_IT_Q8, *_IT_Q12), course=True),
        Medication(
            "amoxicillina/acido clavulanico", ("875/125 mg", "1 g", "1 compressa"), ("per os",), _IT_Q12, course=True
        ),
        Medication(
            "ceftriaxone", ("2 g", "1 g"), ("ev", "im", "per via endovenosa"), (*_IT_DAILY, "ogni 24 ore"), course=True
        ),
        Medication("levofloxacina", ("500 mg", "750 mg"), ("per os", "ev"), _IT_DAILY, course=True),
        Medication("piperacillina/tazobactam", ("4,5 g",), ("ev",), ("ogni 8 ore", "ogni 6 ore"), course=True),
        Medication("claritromicina", ("500 mg", "250 mg"), ("per os", "ev"), _IT_Q12, course=True),
        Medication("ciprofloxacina", ("500 mg", "750 mg"), ("per os",), _IT_Q12, course=True),
        Medication("metronidazolo", ("500 mg",), ("per os", "ev"), _IT_Q8, course=True),
        Medication("vancomicina", ("1 g",), ("ev",), ("ogni 12 ore",), course=True),
        Medication("ramipril", ("5 mg", "2,5 mg", "10 mg"), ("per os",), (*_IT_DAILY, "la mattina", "la sera")),
        Medication("furosemide", ("25 mg", "40 mg", "20 mg"), ("per os", "ev"), (*_IT_MORNING, *_IT_Q12)),
        Medication("metformina", ("500 mg", "850 mg", "1000 mg"), ("per os",), ("due volte al giorno", "ai pasti")),
        Medication("bisoprololo", ("1,25 mg", "2,5 mg", "5 mg"), ("per os",), (*_IT_DAILY, "la mattina")),
        Medication(
            "enoxaparina", ("4000 UI", "6000 UI"), ("sc", "sottocute"), (*_IT_DAILY, "ogni 12 ore"), course=True
        ),
        Medication(
            "paracetamolo",
            ("1 g", "500 mg", "1 compressa"),
            ("per os", "ev"),
            ("al bisogno", "ogni 8 ore", "ogni 6 ore", "tre volte al giorno"),
            course=True,
        ),
        Medication("pantoprazolo", ("40 mg", "20 mg"), ("per os", "ev"), (*_IT_DAILY, "la mattina")),
        Medication("atorvastatina", ("20 mg", "40 mg", "80 mg"), ("per os",), ("la sera", "una volta al giorno")),
        Medication("levotiroxina", ("50 mcg", "75 mcg", "100 mcg"), ("per os",), ("la mattina", "una volta al giorno")),
        Medication("acido acetilsalicilico", ("100 mg",), ("per os",), _IT_DAILY),
        Medication("insulina glargine", ("12 UI", "16 UI", "20 UI"), ("sc", "sottocute"), ("la sera", "1 volta/die")),
        Medication("apixaban", ("5 mg", "2,5 mg"), ("per os",), _IT_Q12),
        Medication("salbutamolo", ("2 puff",), ("per via inalatoria",), ("al bisogno", "ogni 6 ore")),
        Medication("beclometasone/formoterolo", ("2 puff", "1 puff"), ("per via inalatoria",), _IT_Q12),
        Medication(
            "prednisone", ("25 mg", "5 mg", "50 mg"), ("per os",), ("la mattina", "una volta al giorno"), course=True
        ),
        Medication("warfarin", ("5 mg", "2,5 mg"), ("per os",), ("la sera",)),
        Medication("amlodipina", ("5 mg", "10 mg"), ("per os",), (*_IT_DAILY, "la mattina")),
        Medication("fentanyl", ("25 mcg/h", "12 mcg/h"), ("per via transdermica", "transdermica"), ("ogni 72 ore",)),
        Medication("lorazepam", ("1 mg", "2,5 mg"), ("per os",), ("la sera", "al bisogno")),
        Medication("morfina", ("10 mg", "5 mg"), ("sc", "ev", "per os"), ("ogni 4 ore", "al bisogno")),
        Medication("ondansetron", ("4 mg", "8 mg"), ("ev", "per os"), ("ogni 8 ore", "al bisogno")),
        Medication("metamizolo", ("20 gtt", "30 gtt", "1 g"), ("per os",), ("al bisogno", "ogni 8 ore")),
        Medication("tramadolo", ("50 mg", "20 gtt", "100 mg"), ("per os",), ("ogni 8 ore", "al bisogno", *_IT_Q12[1:])),
        Medication("potassio cloruro", ("1 compressa", "2 compresse"), ("per os",), _IT_Q12, course=True),
        Medication("colecalciferolo", ("25.000 UI", "10 gtt"), ("per os",), ("una volta a settimana", "1 volta/die")),
    ),
    durations=(
        "per 3 giorni",
        "per 5 giorni",
        "per 6 giorni",
        "per 7 giorni",
        "per 10 giorni",
        "per 14 giorni",
        "per una settimana",
        "per due settimane",
        "per altri 5 giorni",
        "per complessivi 10 giorni",
    ),
    open_ended=("fino a nuova indicazione", "a tempo indeterminato", "in terapia cronica"),
    prescribe=(
        "Si prescrive {m}.",
        "Si imposta terapia con {m}.",
        "Prosegue {m}.",
        "Si consiglia {m}.",
        "Si introduce {m}.",
        "Durante il ricovero è stata somministrata terapia con {m}.",
        "A domicilio proseguirà {m}.",
        "Si modifica la posologia: {m}.",
    ),
    prescribe_two=(
        "Si prescrive {m} e {m}.",
        "Si imposta terapia con {m} e {m}.",
        "Prosegue {m} in associazione a {m}.",
        "Durante il ricovero terapia con {m} e {m}.",
        "Si consiglia {m}; si aggiunge {m}.",
    ),
    stop=(
        "Si sospende {d}.",
        "Si sospende {d} per {r}.",
        "Sospesa la terapia con {d}.",
        "Non più indicata la terapia con {d}.",
    ),
    stop_reasons=("ipotensione", "peggioramento della funzione renale", "intolleranza gastrica", "bradicardia"),
    of=" di ",
)


_EN_Q8 = ("every 8 hours", "three times daily", "q8h")
_EN_Q12 = ("every 12 hours", "twice daily", "BID")
_EN_DAILY = ("once daily", "once a day")
_EN_PO = ("PO", "orally", "by mouth")

EN_MED = MedVocab(
    lang="en",
    headers=(
        "DISCHARGE SUMMARY - Internal Medicine",
        "DISCHARGE SUMMARY - Cardiology",
        "DISCHARGE SUMMARY - Pulmonology",
        "Discharge Summary - General Medicine Service",
        "DISCHARGE SUMMARY - Infectious Diseases",
        "Discharge Summary - Hospitalist Service",
        "DISCHARGE SUMMARY - General Surgery",
    ),
    contexts=(
        "Admitted with community-acquired pneumonia of the right lower lobe.",
        "Admitted for acute decompensated heart failure.",
        "Presented to the emergency department with worsening shortness of breath and productive cough.",
        "Discharge diagnosis: complicated urinary tract infection.",
        "The hospital course was uneventful, with steady improvement of inflammatory markers.",
        "Afebrile since the third hospital day.",
        "Blood pressure remained well controlled during the stay.",
        "Discharge diagnosis: acute exacerbation of chronic obstructive pulmonary disease.",
        "Admitted with atrial fibrillation with rapid ventricular response.",
        "Echocardiogram showed a reduced ejection fraction.",
        "Follow-up labs showed stable renal function.",
        "Known diabetic with poor glycemic control on admission.",
        "Admitted for cellulitis of the left lower leg.",
        "Leg swelling improved steadily over the admission.",
        "Discharge diagnosis: deep vein thrombosis of the left femoral vein.",
        "At discharge the patient is alert, oriented and ambulating independently.",
        "General condition is good, tolerating a regular diet.",
        "Admitted with acute cholecystitis, managed conservatively.",
        "One episode of hypoglycemia on the second hospital day, resolved.",
        "Repeat chest imaging showed marked improvement of the consolidation.",
        "Pain is well controlled and the patient is mobilizing.",
    ),
    list_titles=("Discharge medications:", "Medications on discharge:", "Discharge medication list:"),
    closings=(
        "Follow up with the primary care physician.",
        "Outpatient follow-up with repeat labs as scheduled.",
        "Advised a low-sodium diet and gradual return to activity.",
        "Return to the emergency department if symptoms worsen.",
        "Home blood pressure monitoring is recommended.",
        "Copies of the inpatient results are attached.",
        "Please contact the ward with any questions.",
        "Clinic review has been arranged.",
    ),
    medications=(
        Medication("amoxicillin", ("500 mg", "875 mg", "1 g"), _EN_PO, (*_EN_Q8, *_EN_Q12[:2]), course=True),
        Medication("amoxicillin-clavulanate", ("875 mg", "1 tablet"), _EN_PO[:2], _EN_Q12, course=True),
        Medication(
            "ceftriaxone", ("1 g", "2 g"), ("IV", "IM", "intravenously"), (*_EN_DAILY, "every 24 hours"), course=True
        ),
        Medication("levofloxacin", ("500 mg", "750 mg"), ("PO", "IV"), _EN_DAILY, course=True),
        Medication(
            "piperacillin-tazobactam", ("4.5 g", "3.375 g"), ("IV",), ("every 6 hours", "every 8 hours"), course=True
        ),
        Medication("clarithromycin", ("500 mg", "250 mg"), ("PO", "orally"), _EN_Q12, course=True),
        Medication("ciprofloxacin", ("500 mg", "750 mg"), ("PO",), _EN_Q12, course=True),
        Medication("metronidazole", ("500 mg",), ("PO", "IV"), _EN_Q8, course=True),
        Medication("vancomycin", ("1 g", "1.25 g"), ("IV",), ("every 12 hours",), course=True),
        Medication("azithromycin", ("500 mg", "250 mg"), ("PO", "orally"), _EN_DAILY, course=True),
        Medication("lisinopril", ("10 mg", "5 mg", "20 mg"), ("PO",), (*_EN_DAILY, "every morning")),
        Medication("metoprolol", ("25 mg", "50 mg", "12.5 mg"), _EN_PO, _EN_Q12),
        Medication("furosemide", ("20 mg", "40 mg"), ("PO", "IV"), (*_EN_DAILY, "twice daily", "every morning")),
        Medication("metformin", ("500 mg", "1000 mg"), _EN_PO, ("twice daily", "with meals")),
        Medication(
            "enoxaparin", ("40 mg", "1 mg/kg"), ("subcutaneously", "SC"), ("once daily", "every 12 hours"), course=True
        ),
        Medication(
            "acetaminophen",
            ("650 mg", "1 g", "2 tablets"),
            _EN_PO,
            ("every 6 hours", "as needed", "PRN", "every 8 hours"),
            course=True,
        ),
        Medication("pantoprazole", ("40 mg",), ("PO", "IV"), (*_EN_DAILY, "twice daily", "every morning")),
        Medication("atorvastatin", ("20 mg", "40 mg", "80 mg"), ("PO",), ("at bedtime", "once daily")),
        Medication("levothyroxine", ("50 mcg", "75 mcg", "100 mcg"), ("PO",), ("every morning", "once daily")),
        Medication("aspirin", ("81 mg", "325 mg"), _EN_PO, _EN_DAILY),
        Medication(
            "insulin glargine", ("12 units", "20 units"), ("subcutaneously", "SC"), ("at bedtime", "once daily")
        ),
        Medication("apixaban", ("5 mg", "2.5 mg"), ("PO",), _EN_Q12[:2]),
        Medication("albuterol", ("2 puffs",), ("inhaled", "by inhalation"), ("as needed", "every 4 hours")),
        Medication("fluticasone-salmeterol", ("1 puff",), ("inhaled",), ("twice daily",)),
        Medication(
            "prednisone", ("40 mg", "20 mg", "10 mg"), ("PO", "orally"), ("once daily", "every morning"), course=True
        ),
        Medication("warfarin", ("5 mg", "2.5 mg"), ("PO",), ("once daily", "every evening")),
        Medication("amlodipine", ("5 mg", "10 mg"), ("PO",), _EN_DAILY),
        Medication("fentanyl", ("25 mcg/h", "12 mcg/h"), ("transdermal",), ("every 72 hours",)),
        Medication("morphine", ("2 mg", "4 mg"), ("IV", "subcutaneously"), ("every 4 hours", "as needed")),
        Medication("ondansetron", ("4 mg", "8 mg"), ("IV", "PO"), ("every 8 hours", "as needed")),
        Medication("oxycodone", ("5 mg", "10 mg"), ("PO",), ("every 4 hours", "as needed"), course=True),
        Medication("heparin", ("5000 units",), ("subcutaneously", "SC"), ("every 8 hours", "every 12 hours")),
        Medication(
            "potassium chloride", ("20 mEq", "2 tablets"), _EN_PO[:2], ("once daily", "twice daily"), course=True
        ),
        Medication("cholecalciferol", ("50,000 units", "1000 units"), ("PO",), ("once weekly", "once a day")),
    ),
    durations=(
        "for 3 days",
        "for 5 days",
        "for 7 days",
        "for 10 days",
        "for 14 days",
        "for one week",
        "for two weeks",
        "for another 5 days",
        "for a total of 7 days",
    ),
    open_ended=("until further notice", "indefinitely", "long term"),
    prescribe=(
        "Started {m}.",
        "Continue {m}.",
        "Discharged on {m}.",
        "Resume {m}.",
        "Received {m} during the admission.",
        "Dose changed: {m}.",
        "Newly prescribed: {m}.",
    ),
    prescribe_two=(
        "Started {m} and {m}.",
        "Discharged on {m} and {m}.",
        "Continue {m}, together with {m}.",
        "Treated with {m} and {m}.",
        "Continue {m}; added {m}.",
    ),
    stop=("Discontinued {d}.", "Stopped {d} because of {r}.", "Held {d}.", "No longer indicated: {d}."),
    stop_reasons=("hypotension", "worsening renal function", "gastrointestinal intolerance", "bradycardia"),
    of=" of ",
)

MED_VOCABS: dict[str, MedVocab] = {"it": IT_MED, "en": EN_MED}
