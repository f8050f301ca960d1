"""Where the project's data folders are (profiles/, plans/), relative to the source tree."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PROFILES_DIR = REPO_ROOT / "profiles"
HARDWARE_DIR = PROFILES_DIR / "hardware"
PLANS_DIR = REPO_ROOT / "plans"
