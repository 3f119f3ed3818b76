"""The embedded default dataset: real NIH-14 metadata, procedurally rendered chest films.

Rows are the real NIH ChestX-ray14 entries bundled with torchxrayvision (``Data_Entry_2017_v2020``),
so age, sex, view, follow-up number and the 14 findings keep their real joint distribution and
patients keep all their images. Ids are synthetic (``syn-000123``, ``nih-<Patient ID>``).

Each image is drawn from (seed, row) alone, at the requested size directly: a frontal chest with
real lung-field shapes (lung masks shipped by torchxrayvision, jittered per patient), heart,
mediastinum, aortic knuckle, spine, trachea, diaphragm domes, ribs, clavicles, soft tissue and
breast shadows, vascular markings, then exposure, blur and quantum noise. Every present finding
leaves its own trace with a random strength (sometimes subtle), findings overlap as they do in the
real rows, and nuisance variation (positioning, habitus, inspiration, exposure, ECG leads) is large,
so a linear probe on raw pixels stays well below AUROC 1.0. AP films magnify the heart and are
noisier; age lowers bone contrast and enlarges the aortic knuckle.

The inpatient-stay group (``hosp_death``, ``icu``) is SIMULATED from age, view and findings with a
logistic model; 2 % of ``view`` and of ``age`` are blanked (seeded) to exercise missing values.

Layout (import ``mmsn.data.synthetic`` for the public names; dependencies run one way,
render -> findings -> anatomy -> templates -> table):

- ``table``: the metadata rows (torchxrayvision's NIH-14 CSV), synthetic ids, the SIMULATED stay
  columns and the seeded blanks.
- ``templates``: lung-field templates (real V7 Labs masks, else parametric super-ellipses).
- ``anatomy``: per-image patient draws, the pixel canvas and the normal-anatomy density map.
- ``findings``: the finding painters (Cardiomegaly is the heart size in ``draw_patient``) and nuisances.
- ``render``: :class:`SyntheticRenderer` (exposure, scanner styles, ``RENDERER_VERSION``) and the
  loaders :func:`load_synthetic` / :func:`load_synthetic_b`.
- ``python -m mmsn.data.synthetic OUT.png [SEED]`` writes a contact sheet of examples.
"""

from mmsn.data.synthetic.render import RENDERER_VERSION, SyntheticRenderer, load_synthetic, load_synthetic_b
from mmsn.data.synthetic.table import xrv_data_dir
from mmsn.data.synthetic.templates import parametric_templates

__all__ = ["RENDERER_VERSION", "SyntheticRenderer", "load_synthetic", "load_synthetic_b", "parametric_templates",
           "xrv_data_dir"]
