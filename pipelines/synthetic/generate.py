"""Vectorised synthetic 12-lead ECGs with known labels.

Each record gets one beat template: a sum of Gaussian waves (P, Q, R, S, a second R, an ST offset, T),
each wave a 3-component dipole vector times a Gaussian in time. Conditions act on the waves (no P in
AF, long PR in 1AVB, notched broad R in LBBB, late R' in RBBB, rotated QRS for an axis deviation, an
attenuated beat for low voltage, ST offset, flipped T). A batched FFT convolution puts the templates
on each record's impulse train; premature ventricular beats are a second, wide template on their own
impulse train. AF adds a 4-9 Hz fibrillatory baseline; the dipole is projected to the measured leads,
which get white noise and baseline wander, and the limb leads are completed.

Times are in seconds relative to the beat's fiducial point (the R peak), amplitudes in mV.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft

from pipelines.synthetic.conditions import (
    CODE_INDEX,
    CODES,
    SyntheticConfig,
    codes_of,
    report_from_codes,
    sample_conditions,
)
from pipelines.synthetic.dipole import dipole_to_leads, measured_leads, twelve_leads

TEMPLATE_WINDOW_S = (-0.48, 0.66)  # from the earliest P onset (long PR) to the latest T end (slow rate)
MIN_RR_S = 0.3  # shortest RR interval drawn (200 bpm)
BOUNDARY_SIGMAS = 2.0  # a wave starts / ends this many standard deviations from its centre

# Nominal rate per rhythm, clear of the 60 and 100 bpm boundaries (AF: the mean ventricular rate).
HEART_RATE_BPM = {"SR": (64.0, 96.0), "SBRAD": (40.0, 56.0), "STACH": (106.0, 150.0), "AFIB": (60.0, 140.0)}
SINUS_ARRHYTHMIA = (0.0, 0.03)  # relative RR modulation at the breathing rate
SINUS_RR_JITTER = 0.005  # relative beat-to-beat RR noise on top of it
BREATHING_HZ = (0.15, 0.35)  # 9-21 breaths a minute
AF_RR_LOG_SD = (0.25, 0.4)  # AF RR intervals are log-normal: coefficient of variation 0.25-0.4
PVC_PER_BEAT = (0.05, 0.2)  # chance that a beat of a PVC record is premature (at least one is)
PVC_COUPLING = (0.55, 0.70)  # PVC time as a fraction of the RR interval it interrupts...
PVC_MIN_COUPLING_S = 0.3  # ...but no earlier than this after the previous beat (or 0.8 RR if sooner)
PVC_MARGIN_S = 0.2  # the beats around a PVC lie at least this far inside the record

PR_INTERVAL_S = (0.12, 0.17)  # P onset to QRS onset
PR_INTERVAL_1AVB_S = (0.23, 0.34)  # first-degree AV block: above 200 ms
QTC_S = (0.39, 0.45)  # Bazett: QT = QTc * sqrt(RR)
NORMAL_QRS_S = 0.09  # nominal QRS duration inside QT; the JT interval is what follows it
AXIS_DEG = {"MID": (0.0, 75.0), "LAD": (-75.0, -45.0), "RAD": (105.0, 150.0)}  # frontal QRS axis; limits -30, 90
REFERENCE_AXIS_DEG = 60.0  # the axis the QRS wave directions below are written for
LIMB_QRS_P2P_MV = (0.8, 2.0)  # largest limb-lead QRS peak-to-peak
LOW_VOLTAGE_LIMB_P2P_MV = (0.2, 0.42)  # LVOLT: every limb lead below 0.5 mV
LOW_VOLTAGE_PRECORDIAL_P2P_MV = (0.5, 0.9)  # LVOLT: every chest lead below 1 mV
ST_ELEVATION_MV = (0.25, 0.5)  # largest ST elevation at J + 60 ms
ST_DEPRESSION_MV = (0.15, 0.35)  # largest ST depression at J + 60 ms
ST_CENTER_AFTER_J_S, ST_WIDTH_S, ST_MEASURE_AFTER_J_S = 0.08, 0.05, 0.06  # ST offset: a broad wave after J
LBBB_SECONDARY_ST_MV = 0.08  # discordant ST offset that comes with LBBB (not an ST label)
PVC_AMPLITUDE_RATIO = (1.5, 2.2)  # PVC QRS against the record's limb-lead QRS peak-to-peak
F_WAVE_HZ = (5.0, 8.0)  # AF fibrillatory waves; frequency modulation keeps them within 4-9 Hz
F_WAVE_MV = (0.04, 0.12)  # f-wave dipole amplitude
BEAT_AMPLITUDE_MODULATION = (0.0, 0.06)  # breathing changes beat amplitude by up to this fraction

# Wave directions (X left, Y inferior, Z anterior) for a QRS axis of REFERENCE_AXIS_DEG.
SEPTAL_Q_DIRECTION = (-0.55, 0.15, 0.8)  # rightward, anterior: q in I/V6, r in V1
TERMINAL_S_DIRECTION = (-0.35, -0.6, -0.5)  # rightward, superior, posterior
LBBB_EARLY_DIRECTION = (0.8, 0.4, -0.2)  # right-to-left septum, then the free wall:
LBBB_LATE_DIRECTION = (0.6, 0.4, -0.85)  # broad notched R in I/V6, QS in V1-V3
RBBB_LATE_DIRECTION = (-0.5, 0.05, 0.85)  # late rightward-anterior R': rsR' in V1, wide S in I/V6
ATRIAL_DIRECTION = (-0.2, 0.5, 0.85)  # f waves show most in V1 and the inferior leads
ST_ELEVATION_DIRECTIONS = ((0.15, 0.2, 1.0), (0.05, 1.0, 0.2), (1.0, -0.2, 0.5))  # anterior, inferior, lateral
ST_DEPRESSION_DIRECTIONS = ((-0.55, -0.5, -0.65), (-0.2, -0.1, -1.0))  # diffuse subendocardial, anterior

WAVES = ("P", "Q", "R", "S", "R2", "ST", "T")
P, Q, R, S, R2, ST, T = range(len(WAVES))
QRS = [Q, R, S, R2]


@dataclass
class BeatWaves:
    """The Gaussian waves of one beat template per record (W = len(WAVES)).

    center: [n, W] s from the R peak; width: [n, W] s (standard deviation);
    vector: [n, W, 3] mV, the dipole at the wave's peak (zero for an absent wave).
    """

    center: np.ndarray
    width: np.ndarray
    vector: np.ndarray

    def render(self, fs: int, waves: list[int] | slice = slice(None)) -> np.ndarray:
        """Dipole template float32 [n, 3, L] of the chosen waves, L samples over TEMPLATE_WINDOW_S."""
        grid = (np.arange(*np.round(np.array(TEMPLATE_WINDOW_S) * fs)) / fs).astype(np.float32)
        offset = (grid - self.center[:, waves, None].astype(np.float32)) / self.width[:, waves, None].astype(np.float32)
        shapes = np.exp(np.float32(-0.5) * offset**2)  # [n, w, L], unit height
        return np.einsum("nwl,nwc->ncl", shapes, self.vector[:, waves].astype(np.float32))

    def qrs_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """QRS onset and offset [n] in s from the R peak, over the waves that are present."""
        return self.bounds(QRS)

    def bounds(self, waves: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Onset of the first and end of the last of the chosen waves that are present [n], in s from the R peak."""
        present = np.linalg.norm(self.vector[:, waves], axis=-1) > 0
        start = self.center[:, waves] - BOUNDARY_SIGMAS * self.width[:, waves]
        end = self.center[:, waves] + BOUNDARY_SIGMAS * self.width[:, waves]
        return np.where(present, start, np.inf).min(axis=1), np.where(present, end, -np.inf).max(axis=1)


@dataclass
class SupraventricularBeat:
    """Each record's supraventricular beat [n records] and the ground truth it was drawn from."""

    waves: BeatWaves
    axis_deg: np.ndarray
    pr_interval_s: np.ndarray
    """NaN in AF."""
    limb_qrs_p2p_mv: np.ndarray
    """Largest limb-lead QRS peak-to-peak."""
    attenuation: np.ndarray
    """Factor on every cardiac signal: below 1 in low-voltage records, else 1."""


@dataclass
class BeatTimes:
    """Beat times of a batch, B slots per record: times [n, B] s; used, premature [n, B] bool."""

    times: np.ndarray
    used: np.ndarray
    premature: np.ndarray


def generate_batch(n: int, rng: np.random.Generator, config: SyntheticConfig) -> tuple[np.ndarray, list[dict]]:
    """Draw `n` labelled ECGs.

    Returns signals float32 [n, 12, T] in mV (T = fs * seconds, leads I II III aVR aVL aVF V1-V6) and
    one metadata dict per record: codes, report, heart_rate (bpm, from the beats in the record),
    r_peaks (sample index of every beat, PVCs included), pvc_peaks (those of PVCs), axis_deg,
    pr_interval_s (NaN in AF), qrs_onset_s / qrs_offset_s (from the R peak of a supraventricular
    beat), pvc_onset_s / pvc_end_s (QRS onset to T end of the record's premature beat, from its peak;
    drawn for every record, meaningful where pvc_peaks is not empty), st_deviation_mv (12 leads, the
    ST offset at J + 60 ms), static_noise and baseline_drift.
    """
    fs, n_samples = config.fs, int(round(config.fs * config.seconds))
    conditions = sample_conditions(n, rng, config)
    has = {code: conditions[:, CODE_INDEX[code]] for code in CODES}
    rate = _heart_rate(has, rng)
    beats = _beat_times(rate, has["AFIB"], has["PVC"], config.seconds, rng)
    sinus = _supraventricular_beat(has, rate, rng, fs)
    st_deviation = _add_st_offset(sinus.waves, has, rng)
    pvc = _pvc_waves(sinus.limb_qrs_p2p_mv, rng)
    templates = np.stack([sinus.waves.render(fs), pvc.render(fs)], axis=1)  # [n, 2, 3, L]
    dipole = _place_beats(templates, beats, _beat_amplitude(beats.times, rng), fs, n_samples)
    time = np.arange(n_samples) / fs
    dipole[has["AFIB"]] += _fibrillation(sinus.attenuation[has["AFIB"]], time, rng)
    measured = measured_leads(dipole)
    static_noise = rng.random(n) < config.static_noise_probability
    baseline_drift = rng.random(n) < config.baseline_drift_probability
    measured += _white_noise(measured.shape, static_noise, config, rng)
    measured[baseline_drift] += _baseline_wander(int(baseline_drift.sum()), time, config, rng)
    signals = twelve_leads(measured)
    onset, offset = sinus.waves.qrs_bounds()
    pvc_onset, pvc_end = pvc.bounds(list(range(len(WAVES))))
    metadata = []
    for i in range(n):
        in_record = beats.used[i] & (beats.times[i] >= 0) & (beats.times[i] < config.seconds)
        times = beats.times[i, in_record]
        codes = codes_of(conditions[i])
        metadata.append(
            {
                "codes": codes,
                "report": report_from_codes(codes),
                "heart_rate": float(60.0 * (len(times) - 1) / (times[-1] - times[0])),
                "r_peaks": np.round(times * fs).astype(int),
                "pvc_peaks": np.round(beats.times[i, in_record & beats.premature[i]] * fs).astype(int),
                "axis_deg": float(sinus.axis_deg[i]),
                "pr_interval_s": float(sinus.pr_interval_s[i]),
                "qrs_onset_s": float(onset[i]),
                "qrs_offset_s": float(offset[i]),
                "pvc_onset_s": float(pvc_onset[i]),
                "pvc_end_s": float(pvc_end[i]),
                "st_deviation_mv": st_deviation[i].tolist(),
                "static_noise": bool(static_noise[i]),
                "baseline_drift": bool(baseline_drift[i]),
            }
        )
    return signals, metadata


def _heart_rate(has: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Nominal heart rate [n] in bpm, in the range of each record's rhythm."""
    low, high = np.zeros(len(has["SR"])), np.zeros(len(has["SR"]))
    for rhythm, (rhythm_low, rhythm_high) in HEART_RATE_BPM.items():
        low[has[rhythm]], high[has[rhythm]] = rhythm_low, rhythm_high
    return rng.uniform(low, high)


def _beat_times(
    rate: np.ndarray, afib: np.ndarray, pvc: np.ndarray, seconds: float, rng: np.random.Generator
) -> BeatTimes:
    """Beat times from a first beat in [-RR, 0) on; `used` where the beat's template overlaps the record.

    Sinus RR varies smoothly with breathing; AF RR is log-normal and independent beat to beat. In
    PVC records some interior beats come early instead (coupling 0.55-0.7 RR) and the next beat keeps
    its time: a full compensatory pause.
    """
    n = len(rate)
    slots = int(np.ceil((seconds - TEMPLATE_WINDOW_S[0]) / MIN_RR_S)) + 1
    rr_mean = 60.0 / rate
    index = np.arange(slots)
    breathing_phase = 2 * np.pi * rng.uniform(*BREATHING_HZ, (n, 1)) * rr_mean[:, None] * index
    breathing = rng.uniform(*SINUS_ARRHYTHMIA, (n, 1)) * np.sin(breathing_phase + rng.uniform(0, 2 * np.pi, (n, 1)))
    sinus_rr = rr_mean[:, None] * (1 + breathing + SINUS_RR_JITTER * rng.standard_normal((n, slots)))
    log_sd = rng.uniform(*AF_RR_LOG_SD, n)[:, None]
    af_rr = rr_mean[:, None] * np.exp(log_sd * rng.standard_normal((n, slots)) - log_sd**2 / 2)
    rr = np.maximum(np.where(afib[:, None], af_rr, sinus_rr), MIN_RR_S)
    first = -rng.random(n) * rr_mean
    times = first[:, None] + np.concatenate([np.zeros((n, 1)), np.cumsum(rr[:, :-1], axis=1)], axis=1)
    used = (times >= -TEMPLATE_WINDOW_S[1]) & (times < seconds - TEMPLATE_WINDOW_S[0])

    previous = np.concatenate([times[:, :1], times[:, :-1]], axis=1)
    following = np.concatenate([times[:, 1:], times[:, -1:]], axis=1)
    candidate = pvc[:, None] & (index > 0) & (previous >= PVC_MARGIN_S) & (following < seconds - PVC_MARGIN_S)
    draw = rng.random((n, slots))
    premature = candidate & (draw < rng.uniform(*PVC_PER_BEAT, n)[:, None])
    forced = np.argmax(np.where(candidate, draw, -1.0), axis=1)
    premature[np.flatnonzero(candidate.any(axis=1)), forced[candidate.any(axis=1)]] = True
    premature[:, 1:] &= ~premature[:, :-1]  # no couplets: a PVC never follows a PVC
    rr_interrupted = times - previous
    coupling = np.maximum(rng.uniform(*PVC_COUPLING, (n, slots)) * rr_interrupted, PVC_MIN_COUPLING_S)
    times = np.where(premature, previous + np.minimum(coupling, 0.8 * rr_interrupted), times)
    return BeatTimes(times, used, premature)


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def _directions(direction: tuple[float, float, float], n: int) -> np.ndarray:
    """A fixed direction for every record: unit vectors [n, 3]."""
    return np.broadcast_to(_unit(np.array(direction)), (n, 3))


def _frontal_direction(angle_deg: np.ndarray, anterior: np.ndarray) -> np.ndarray:
    """Unit vectors [n, 3] at hexaxial angles [n] with anterior components [n] before normalising."""
    angle = np.radians(angle_deg)
    return _unit(np.stack([np.cos(angle), np.sin(angle), anterior], axis=-1))


def _rotate_frontal(vectors: np.ndarray, angle_deg: np.ndarray) -> np.ndarray:
    """Rotate vectors [n, ..., 3] about Z by [n] degrees (towards increasing hexaxial angle)."""
    angle = np.radians(angle_deg).reshape(-1, *([1] * (vectors.ndim - 2)))
    x, y, z = vectors[..., 0], vectors[..., 1], vectors[..., 2]
    return np.stack([x * np.cos(angle) - y * np.sin(angle), x * np.sin(angle) + y * np.cos(angle), z], axis=-1)


def _supraventricular_beat(
    has: dict[str, np.ndarray], rate: np.ndarray, rng: np.random.Generator, fs: int
) -> SupraventricularBeat:
    """Each record's conducted beat, all waves but the ST offset."""
    n = len(rate)
    center, width, vector = np.zeros((n, len(WAVES))), np.ones((n, len(WAVES))), np.zeros((n, len(WAVES), 3))
    lbbb, rbbb = has["CLBBB"], has["CRBBB"]

    # Normal conduction, about 80 ms: septal q 22-30 ms before R, R, terminal s 22-30 ms after it.
    center[:, Q], width[:, Q] = rng.uniform(-0.030, -0.022, n), rng.uniform(0.007, 0.009, n)
    width[:, R] = rng.uniform(0.009, 0.012, n)
    center[:, S], width[:, S] = rng.uniform(0.022, 0.030, n), rng.uniform(0.008, 0.011, n)
    width[rbbb, S] = rng.uniform(0.012, 0.016, int(rbbb.sum()))  # slurred S of RBBB
    vector[:, Q] = rng.uniform(0.1, 0.2, (n, 1)) * _directions(SEPTAL_Q_DIRECTION, n)
    vector[:, R] = rng.uniform(1.0, 1.6, (n, 1)) * _frontal_direction(
        np.full(n, REFERENCE_AXIS_DEG), rng.uniform(-0.5, -0.15, n)
    )
    vector[:, S] = rng.uniform(0.25, 0.5, (n, 1)) * _directions(TERMINAL_S_DIRECTION, n)

    # LBBB, 125-170 ms: two broad R humps 55-70 ms apart. RBBB, 135-165 ms: a late R' at 55-70 ms.
    lbbb_center = rng.uniform(-0.030, -0.020, n)
    center[lbbb, R], width[lbbb, R] = lbbb_center[lbbb], rng.uniform(0.018, 0.022, n)[lbbb]
    center[lbbb, R2] = lbbb_center[lbbb] + rng.uniform(0.055, 0.07, n)[lbbb]
    width[lbbb, R2] = rng.uniform(0.020, 0.026, n)[lbbb]
    vector[lbbb, R] = rng.uniform(0.7, 1.1, (n, 1))[lbbb] * _directions(LBBB_EARLY_DIRECTION, n)[lbbb]
    vector[lbbb, R2] = rng.uniform(0.9, 1.4, (n, 1))[lbbb] * _directions(LBBB_LATE_DIRECTION, n)[lbbb]
    vector[lbbb, Q] = vector[lbbb, S] = 0.0  # no septal q, no terminal s
    center[rbbb, R2], width[rbbb, R2] = rng.uniform(0.055, 0.07, n)[rbbb], rng.uniform(0.020, 0.026, n)[rbbb]
    vector[rbbb, R2] = rng.uniform(0.6, 1.0, (n, 1))[rbbb] * _directions(RBBB_LATE_DIRECTION, n)[rbbb]

    # Rotate the whole QRS in the frontal plane so that its net area points along the drawn axis.
    axis = rng.uniform(*AXIS_DEG["MID"], n)
    for code in ("LAD", "RAD"):
        axis[has[code]] = rng.uniform(*AXIS_DEG[code], int(has[code].sum()))
    net_area = np.einsum("nwc,nw->nc", vector[:, QRS], width[:, QRS])  # proportional to the QRS integral
    vector[:, QRS] = _rotate_frontal(vector[:, QRS], axis - np.degrees(np.arctan2(net_area[:, 1], net_area[:, 0])))

    waves = BeatWaves(center, width, vector)
    onset, offset = waves.qrs_bounds()

    # P wave: 70-100 ms, 0.1-0.25 mV towards the lower left, starting one PR interval before the QRS.
    pr_interval = np.where(has["1AVB"], rng.uniform(*PR_INTERVAL_1AVB_S, n), rng.uniform(*PR_INTERVAL_S, n))
    pr_interval[has["AFIB"]] = np.nan
    width[:, P] = rng.uniform(0.018, 0.024, n)
    center[:, P] = onset - np.nan_to_num(pr_interval) + BOUNDARY_SIGMAS * width[:, P]
    p_direction = _frontal_direction(rng.uniform(40.0, 70.0, n), np.full(n, 0.15))
    vector[:, P] = np.where(has["AFIB"], 0.0, rng.uniform(0.10, 0.25, n))[:, None] * p_direction

    # T wave: 0.2-0.45 mV, ending one JT interval after the QRS; both shorten with the RR interval.
    rr = 60.0 / rate
    width[:, T] = rng.uniform(0.035, 0.045, n) * np.sqrt(rr)
    t_end = offset + rng.uniform(*QTC_S, n) * np.sqrt(rr) - NORMAL_QRS_S
    center[:, T] = t_end - BOUNDARY_SIGMAS * width[:, T]
    t_direction = _frontal_direction(rng.uniform(20.0, 60.0, n), rng.uniform(0.15, 0.5, n))
    t_direction[lbbb] = -_unit(vector[lbbb, R2])  # discordant T of LBBB
    t_direction[rbbb] = _unit(t_direction[rbbb] - 0.6 * _unit(vector[rbbb, R2]))  # T inverted in V1-V3
    t_direction[has["INVT"]] *= -1.0
    vector[:, T] = rng.uniform(0.2, 0.45, (n, 1)) * t_direction
    limb_p2p, attenuation = _scale_voltage(waves, has["LVOLT"], rng, fs)
    return SupraventricularBeat(waves, axis, pr_interval, limb_p2p, attenuation)


def _scale_voltage(
    waves: BeatWaves, low_voltage: np.ndarray, rng: np.random.Generator, fs: int
) -> tuple[np.ndarray, np.ndarray]:
    """Scale each QRS in place to a drawn largest limb-lead peak-to-peak; return (that p2p, attenuation) [n].

    Low voltage is an attenuation of the whole beat (as by effusion or obesity): P and T shrink with
    the QRS, which ends below a drawn limb-lead p2p under 0.5 mV and chest-lead p2p under 1 mV.
    """
    n = len(low_voltage)
    leads = dipole_to_leads(waves.render(fs, QRS))  # [n, 12, L]
    p2p = leads.max(axis=-1) - leads.min(axis=-1)
    limb_p2p = rng.uniform(*LIMB_QRS_P2P_MV, n)
    scale = limb_p2p / p2p[:, :6].max(axis=1)
    attenuation = np.minimum(
        rng.uniform(*LOW_VOLTAGE_LIMB_P2P_MV, n) / limb_p2p,
        rng.uniform(*LOW_VOLTAGE_PRECORDIAL_P2P_MV, n) / (p2p[:, 6:].max(axis=1) * scale),
    )
    attenuation = np.where(low_voltage, np.minimum(attenuation, 1.0), 1.0)
    waves.vector[:, QRS] *= (scale * attenuation)[:, None, None]
    waves.vector[:, [P, T]] *= attenuation[:, None, None]
    return limb_p2p * attenuation, attenuation


def _add_st_offset(waves: BeatWaves, has: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Set the ST wave in place; return the ST offset at J + 60 ms per lead [n, 12] (mV).

    STE_ / STD_ point the offset along a random territory and scale it so the most affected lead
    reaches the drawn elevation / depression; LBBB gets its small discordant offset.
    """
    n = len(has["SR"])
    _, offset = waves.qrs_bounds()
    waves.center[:, ST], waves.width[:, ST] = offset + ST_CENTER_AFTER_J_S, ST_WIDTH_S
    at_measure = np.exp(-0.5 * ((ST_MEASURE_AFTER_J_S - ST_CENTER_AFTER_J_S) / ST_WIDTH_S) ** 2)
    direction = np.zeros((n, 3))
    for code, options in (("STE_", ST_ELEVATION_DIRECTIONS), ("STD_", ST_DEPRESSION_DIRECTIONS)):
        choice = rng.integers(len(options), size=n)
        direction[has[code]] = _unit(np.array(options))[choice][has[code]]
    per_lead = dipole_to_leads(direction[:, :, None])[..., 0] * at_measure  # [n, 12] for 1 mV
    amplitude = np.zeros(n)
    elevation, depression = rng.uniform(*ST_ELEVATION_MV, n), rng.uniform(*ST_DEPRESSION_MV, n)
    amplitude[has["STE_"]] = elevation[has["STE_"]] / per_lead[has["STE_"]].max(axis=1)
    amplitude[has["STD_"]] = depression[has["STD_"]] / -per_lead[has["STD_"]].min(axis=1)
    waves.vector[:, ST] = amplitude[:, None] * direction
    waves.vector[has["CLBBB"], ST] = -LBBB_SECONDARY_ST_MV * _unit(waves.vector[has["CLBBB"], R2])
    return dipole_to_leads(waves.vector[:, ST, :, None])[..., 0] * at_measure


def _pvc_waves(limb_p2p: np.ndarray, rng: np.random.Generator) -> BeatWaves:
    """Premature ventricular beat, about 160 ms: no P, two broad humps from a random focus, discordant T."""
    n = len(limb_p2p)
    center, width, vector = np.zeros((n, len(WAVES))), np.ones((n, len(WAVES))), np.zeros((n, len(WAVES), 3))
    direction = _frontal_direction(rng.uniform(-180.0, 180.0, n), rng.uniform(-0.8, 0.8, n))
    amplitude = limb_p2p * rng.uniform(*PVC_AMPLITUDE_RATIO, n)
    center[:, R], width[:, R] = -0.03, rng.uniform(0.016, 0.022, n)
    center[:, R2], width[:, R2] = 0.035, rng.uniform(0.020, 0.026, n)
    vector[:, R] = 0.6 * amplitude[:, None] * direction
    vector[:, R2] = 0.8 * amplitude[:, None] * direction
    center[:, T], width[:, T] = rng.uniform(0.26, 0.30, n), rng.uniform(0.045, 0.055, n)
    vector[:, T] = -rng.uniform(0.3, 0.45, (n, 1)) * amplitude[:, None] * direction
    return BeatWaves(center, width, vector)


def _beat_amplitude(times: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-beat amplitude factor [n, B]: breathing moves the heart against the electrodes."""
    n = len(times)
    depth = rng.uniform(*BEAT_AMPLITUDE_MODULATION, (n, 1))
    phase = 2 * np.pi * rng.uniform(*BREATHING_HZ, (n, 1)) * times + rng.uniform(0, 2 * np.pi, (n, 1))
    return 1 + depth * np.sin(phase)


def _place_beats(templates: np.ndarray, beats: BeatTimes, scale: np.ndarray, fs: int, n_samples: int) -> np.ndarray:
    """Convolve each record's impulse trains with its beat templates: dipole float32 [n, 3, n_samples].

    templates: [n, 2, 3, L], supraventricular and premature; scale: [n, B], each beat's amplitude.
    A batched real FFT over the padded record (beats may hang over either end); premature impulse
    trains are only transformed for the records that have them.
    """
    n, _, _, length = templates.shape
    n_fft = scipy.fft.next_fast_len(n_samples + 2 * length, real=True)
    record, slot = np.nonzero(beats.used)
    template_start = int(round(TEMPLATE_WINDOW_S[0] * fs)) + length  # in the padded record
    start = np.round(beats.times[record, slot] * fs).astype(np.int64) + template_start
    impulses = np.zeros((n, 2, n_fft), dtype=np.float32)
    impulses[record, beats.premature[record, slot].astype(int), start] = scale[record, slot]
    spectrum = scipy.fft.rfft(templates[:, 0], n=n_fft) * scipy.fft.rfft(impulses[:, 0])[:, None]
    with_pvc = np.flatnonzero(beats.premature.any(axis=1))
    pvc_spectrum = scipy.fft.rfft(templates[with_pvc, 1], n=n_fft) * scipy.fft.rfft(impulses[with_pvc, 1])[:, None]
    spectrum[with_pvc] += pvc_spectrum
    return scipy.fft.irfft(spectrum, n=n_fft)[:, :, length : length + n_samples]


def _fibrillation(attenuation: np.ndarray, time: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """AF fibrillatory baseline as a dipole [n, 3, T]: 4-9 Hz, frequency- and amplitude-modulated,
    times each record's voltage attenuation [n]."""
    n = len(attenuation)

    def column(low: float, high: float) -> np.ndarray:
        return rng.uniform(low, high, (n, 1))

    modulation_hz = column(0.1, 0.4)
    phase = (
        2 * np.pi * column(*F_WAVE_HZ) * time
        - column(0.3, 1.0) / modulation_hz * np.cos(2 * np.pi * modulation_hz * time + column(0, 2 * np.pi))
        + column(0, 2 * np.pi)
    )
    swell = 1 + 0.3 * np.sin(2 * np.pi * column(0.1, 0.3) * time + column(0, 2 * np.pi))
    envelope = attenuation[:, None] * column(*F_WAVE_MV) * swell
    wave = envelope * (np.sin(phase) + column(0.1, 0.35) * np.sin(2 * phase + column(0, 2 * np.pi)))
    return wave[:, None, :] * _directions(ATRIAL_DIRECTION, n)[:, :, None]


def _white_noise(
    shape: tuple[int, ...], static_noise: np.ndarray, config: SyntheticConfig, rng: np.random.Generator
) -> np.ndarray:
    """Amplifier noise on every measured lead, strong where `static_noise`: float32 `shape` (mV).

    White, drawn as uniform 8-bit integers scaled to the drawn standard deviation: a fraction of the
    cost of Gaussian draws, and as good once the writer quantises to 1 uV.
    """
    n = shape[0]
    level = rng.uniform(*config.noise_floor_mv, n) + static_noise * rng.uniform(*config.static_noise_mv, n)
    steps = rng.integers(-128, 128, size=shape, dtype=np.int8)
    step_mv = (level / np.sqrt((256**2 - 1) / 12)).astype(np.float32)  # uniform over 256 steps
    return np.multiply(steps, step_mv[:, None, None], dtype=np.float32)


def _baseline_wander(n: int, time: np.ndarray, config: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """Baseline wander [n, 8, T] (mV): two 0.05-0.5 Hz sinusoids shared by the leads, per-lead weights."""
    frequency, phase = rng.uniform(0.05, 0.5, (n, 2, 1)), rng.uniform(0, 2 * np.pi, (n, 2, 1))
    lead_weight = rng.uniform(-0.5, 0.5, (n, 8, 2)) * rng.uniform(*config.baseline_drift_mv, (n, 1, 1))
    return lead_weight.astype(np.float32) @ np.sin(2 * np.pi * frequency * time + phase).astype(np.float32)
