"""The 3D Slicer command-line module: its Execution Model XML, its launcher and a run as Slicer makes it."""

from __future__ import annotations

import csv
import os
import site
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from napari_dglandmark import __version__
from napari_dglandmark.io.csv_table import LANDMARK_COLUMNS
from napari_dglandmark.slicer_module import MODULE_NAME, module_xml, write_module
from tests.conftest import SHARED_DATA, T1W, require_shared

XSD = SHARED_DATA / "slicer-execution-model" / "ModuleDescription.xsd"
EXAMPLE = SHARED_DATA / "slicer-execution-model" / "example-PointExample1.xml"
# What Slicer's environment looks like to a module it starts: its own Python and libraries.
SLICER_ENV = {"PYTHONHOME": "/opt/Slicer/lib/Python", "PYTHONPATH": "/opt/Slicer/lib/Python/lib/python3.12",
              "LD_LIBRARY_PATH": "/opt/Slicer/lib/Slicer-5.8", "PATH": "/usr/bin:/bin"}

# The published XSD predates three things Slicer's own parser (ModuleDescriptionParser.cxx) and command-line
# logic (vtkSlicerCLIModuleLogic.cxx) support, and that the module needs: an enumeration of several
# <element>s (the device choice), a <pointfile> with <channel>output</channel> and fileExtensions (without
# them Slicer never loads the points back), and a <file> given by <longflag> rather than <index> (Slicer
# refuses to run when an index <file> is empty, so an optional checkpoint must be a flag). Each amendment
# below is applied to the XSD's own text and must match exactly once.
XSD_AMENDMENTS = [
    ('<xsd:element name="element" type="xsd:string"/>',
     '<xsd:element name="element" type="xsd:string" maxOccurs="unbounded"/>'),
    ('<xsd:extension base="pointType">\n          <xsd:attribute name="type" type="xsd:string"/>',
     '<xsd:extension base="pointType">\n          <xsd:sequence><xsd:element name="channel" minOccurs="0">'
     '<xsd:simpleType><xsd:restriction base="xsd:string"><xsd:enumeration value="input"/>'
     '<xsd:enumeration value="output"/></xsd:restriction></xsd:simpleType></xsd:element></xsd:sequence>\n'
     '          <xsd:attribute name="type" type="xsd:string"/>\n'
     '          <xsd:attribute name="fileExtensions" type="xsd:string"/>'),
    ('<xsd:element name="index" type="xsd:nonNegativeInteger"/>',
     '<xsd:element name="index" type="xsd:nonNegativeInteger" minOccurs="0"/>\n'
     '        <xsd:element name="longflag" type="flagType" minOccurs="0"/>'),
]
# Exactly those three, and nothing else, differ from the XSD as published: (element, what its error names).
EXPECTED_DEVIATIONS = {("pointfile", "'fileExtensions'"), ("pointfile", "'channel'"), ("file", "'longflag'"),
                       ("string-enumeration", "'element'")}


def _schema(text: str | None = None):
    xmlschema = pytest.importorskip("xmlschema")
    require_shared(XSD)
    schema = xmlschema.XMLSchema(text if text is not None else str(XSD), validation="lax",
                                 base_url=str(XSD.parent))
    # xmlschema wraps an extension that adds only attributes (typedIndexParamType: <image>, <table>) in a
    # sequence around the base's xsd:all and then accepts no <image> at all, whatever the child order.
    # XSD 1.0 (structures 3.4.2) gives such an extension the base's content type: restore exactly that.
    schema.types["typedIndexParamType"].content = schema.types["indexedParamType"].content
    return schema


def _amended_schema():
    text = require_shared(XSD).read_text(encoding="utf-8")
    for old, new in XSD_AMENDMENTS:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return _schema(text)


def _errors(schema, xml: str) -> set[tuple[str, str]]:
    return {(e.path.rsplit("/", 1)[-1].split("[")[0], e.reason) for e in schema.iter_errors(xml)}


def test_xml_validates_against_the_shared_xsd() -> None:
    xml = module_xml()
    assert _errors(_amended_schema(), xml) == set()
    # Against the XSD as published, only the three documented Slicer-parser features differ.
    errors = _errors(_schema(), xml)
    matched = {(tag, key) for tag, reason in errors for tag2, key in EXPECTED_DEVIATIONS
               if tag == tag2 and key in reason}
    assert matched == EXPECTED_DEVIATIONS and len(errors) == len(EXPECTED_DEVIATIONS), errors


def test_the_validator_has_teeth() -> None:
    schema, amended = _schema(), _amended_schema()
    assert _errors(schema, require_shared(EXAMPLE).read_text(encoding="utf-8")) == set()
    xml = module_xml()
    broken = [xml.replace("<title>", "<titel>").replace("</title>", "</titel>"),
              xml.replace('coordinateSystem="ras"', 'coordinateSystem="RAS"'),
              xml.replace("<channel>input</channel>", "<channel>inout</channel>"),
              xml.replace("<index>1</index>", "<index>first</index>"),
              xml.replace("<label>Model</label>", "<label>Model</label><widget/>")]
    for text in broken:
        assert text != xml
        assert _errors(amended, text), text[:80]


def _params(xml: str) -> dict[str, ET.Element]:
    root = ET.fromstring(xml)
    return {p.findtext("name"): p for group in root.findall("parameters") for p in group
            if p.find("name") is not None}


def test_xml_declares_what_slicer_needs() -> None:
    from napari_dglandmark.model.devices import DEVICE_CHOICES
    from napari_dglandmark.model.inference import bundled_models

    xml = module_xml()
    root = ET.fromstring(xml)
    for tag in ("category", "title", "description", "documentation-url", "license", "contributor"):
        assert (root.findtext(tag) or "").strip(), tag
    assert root.findtext("documentation-url").startswith("https://")  # never a path of the machine that wrote it
    assert root.findtext("version") == __version__
    p = _params(xml)
    assert (p["inputVolume"].tag, p["inputVolume"].findtext("channel"), p["inputVolume"].findtext("index")) == (
        "image", "input", "0")
    points = p["outputLandmarks"]
    assert (points.tag, points.findtext("channel"), points.findtext("longflag")) == ("pointfile", "output", "--landmarks")
    assert points.get("fileExtensions") == ".mrk.json" and points.get("coordinateSystem") == "ras"
    for name, index in (("outputMeasurements", "1"), ("outputLandmarkTable", "2")):
        assert (p[name].tag, p[name].findtext("channel"), p[name].findtext("index")) == ("table", "output", index)
        assert p[name].get("fileExtensions") == ".csv"
    assert [e.text for e in p["model"].findall("element")] == list(bundled_models())
    assert p["model"].findtext("default") == "afids32"
    assert (p["checkpoint"].tag, p["checkpoint"].findtext("longflag"), p["checkpoint"].find("index")) == (
        "file", "--checkpoint", None)
    assert [e.text for e in p["device"].findall("element")] == list(DEVICE_CHOICES)
    # Slicer passes flags, then index arguments in index order: every parameter must have exactly one.
    for name, param in p.items():
        assert (param.find("longflag") is None) != (param.find("index") is None), name


def slicer_command(launcher: Path, xml: str, values: dict[str, str]) -> list[str]:
    """The command line Slicer builds from the XML (vtkSlicerCLIModuleLogic): flags, then indices in order."""
    params = _params(xml)
    command = [str(launcher)]
    for name, param in params.items():
        flag = param.findtext("longflag")
        if flag and values.get(name):
            command += [flag, values[name]]
    indexed = sorted((int(p.findtext("index")), name) for name, p in params.items() if p.find("index") is not None)
    return command + [values[name] for _, name in indexed]


@pytest.fixture(scope="module")
def launcher(tmp_path_factory) -> Path:
    """The module as `dglandmark slicer-module DIR` writes it."""
    folder = tmp_path_factory.mktemp("slicer") / "modules"
    done = subprocess.run([sys.executable, "-m", "napari_dglandmark.cli", "slicer-module", str(folder)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and "Additional module paths" in lines[0] and str(folder.resolve()) in lines[0]
    path = folder / MODULE_NAME
    assert path.stat().st_mode & stat.S_IXUSR
    assert [p.name for p in folder.iterdir()] == [MODULE_NAME]  # no temporary file left behind
    return path


def test_launcher_prints_the_xml_from_slicers_environment(launcher: Path) -> None:
    done = subprocess.run([str(launcher), "--xml"], capture_output=True, text=True, env=SLICER_ENV, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == module_xml()


def test_launcher_restores_the_installation_environment(tmp_path: Path) -> None:
    fake_python = tmp_path / "python"  # stands for the interpreter: shows what it was started with
    fake_python.write_text('#!/bin/sh\necho "${LD_LIBRARY_PATH}|${PYTHONHOME-unset}|$*"\n')
    fake_python.chmod(0o755)
    path = write_module(tmp_path / "m", python=str(fake_python),
                        environ={"LD_LIBRARY_PATH": "/opt/my env/lib:'quoted'"})
    done = subprocess.run([str(path), "--xml", "a b"], capture_output=True, text=True, env=SLICER_ENV, timeout=60)
    assert done.stdout.strip() == "/opt/my env/lib:'quoted'|unset|-m napari_dglandmark.slicer_module --xml a b"


def _slicer_points(path: Path):
    """Labels, descriptions and RAS positions as 3D Slicer's own Markups reader (slicer-core) loads them."""
    slicer = pytest.importorskip("slicer", reason="slicer-core (3D Slicer's MRML library) is not installed")
    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLMarkupsFiducialNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()
    scene.AddNode(storage)
    node.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    labels, descriptions, ras = [], [], []
    for i in range(node.GetNumberOfControlPoints()):
        xyz = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(i, xyz)
        labels.append(node.GetNthControlPointLabel(i))
        descriptions.append(node.GetNthControlPointDescription(i))
        ras.append(xyz)
    return labels, descriptions, np.array(ras)


def _slicer_table(path: Path) -> list[dict[str, str]]:
    """A CSV as 3D Slicer's table reader loads it (one dict per row)."""
    slicer = pytest.importorskip("slicer")
    scene = slicer.vtkMRMLScene()
    node = slicer.vtkMRMLTableNode()
    scene.AddNode(node)
    storage = slicer.vtkMRMLTableStorageNode()
    scene.AddNode(storage)
    node.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    table = node.GetTable()
    columns = [node.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    return [{col: node.GetCellText(r, c) for c, col in enumerate(columns)} for r in range(table.GetNumberOfRows())]


def test_slicer_style_run_matches_the_cli(launcher: Path, tmp_path: Path) -> None:
    import SimpleITK as sitk

    from napari_dglandmark.cli import main as cli_main
    from napari_dglandmark.io import read_landmarks

    nrrd = tmp_path / "input.nrrd"  # Slicer hands a command-line module the volume as a temporary NRRD
    sitk.WriteImage(sitk.ReadImage(str(require_shared(T1W))), str(nrrd))
    out = {"outputLandmarks": tmp_path / "points.mrk.json", "outputMeasurements": tmp_path / "measurements.csv",
           "outputLandmarkTable": tmp_path / "landmarks.csv"}
    values = {"inputVolume": str(nrrd), "model": "afids32", "checkpoint": "", "device": "cpu",
              **{k: str(v) for k, v in out.items()}}
    command = slicer_command(launcher, module_xml(), values)
    assert command[1:3] == ["--landmarks", str(out["outputLandmarks"])] and command[-3] == str(nrrd)
    done = subprocess.run(command, capture_output=True, text=True, env=SLICER_ENV, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "<filter-progress>1.000</filter-progress>" in done.stdout

    reference = tmp_path / "cli.mrk.json"
    assert cli_main(["detect", str(T1W), "--out", str(reference), "--device", "cpu", "--quiet"]) == 0
    ref = read_landmarks(reference)

    labels, descriptions, ras = _slicer_points(out["outputLandmarks"])
    assert len(labels) == 32 and all(labels)
    assert labels == ref.names
    error = np.linalg.norm(ras - ref.positions_in("RAS"), axis=1)
    assert error.max() < 1.0, dict(zip(labels, error.round(3), strict=True))
    assert all("confidence 0." in d or "confidence 1." in d for d in descriptions)
    assert descriptions[labels.index("AC")].startswith("anterior commissure; confidence")

    rows = _slicer_table(out["outputLandmarkTable"])
    assert [r["landmark"] for r in rows] == labels
    assert list(rows[0]) == list(LANDMARK_COLUMNS)  # the one landmark table, as the CLI writes it
    assert {r["needs_review"] for r in rows} <= {"1", "0"}
    for r, d in zip(rows, descriptions, strict=True):
        assert (r["needs_review"] == "1") == ("NEEDS REVIEW" in d)
        assert abs(float(r["confidence"]) - float(d.split("confidence ")[1][:4])) <= 0.006
    measurements = {r["measurement"]: r for r in _slicer_table(out["outputMeasurements"])}
    ac_pc = np.linalg.norm(ras[labels.index("AC")] - ras[labels.index("PC")])
    assert float(measurements["AC-PC"]["value_mm"]) == pytest.approx(ac_pc, abs=1e-6)
    assert 22.0 < ac_pc < 32.0  # an adult's AC-PC distance


def _run(launcher: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(launcher), *args], capture_output=True, text=True, env=SLICER_ENV, timeout=300)


@pytest.mark.parametrize("problem", ["not a volume", "missing argument", "unknown device"])
def test_bad_input_is_one_line_and_non_zero(launcher: Path, tmp_path: Path, problem: str) -> None:
    bad = tmp_path / "input.nrrd"
    bad.write_text("this is not an image\n")
    outputs = [str(tmp_path / "m.csv"), str(tmp_path / "l.csv")]
    args = {"not a volume": ["--landmarks", str(tmp_path / "p.mrk.json"), str(bad), *outputs],
            "missing argument": [str(bad), outputs[0]],
            "unknown device": ["--device", "tpu", str(bad), *outputs]}[problem]
    done = _run(launcher, *args)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{MODULE_NAME}: error: "), done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.nrrd"]  # nothing written


def test_checkpoint_overrides_the_bundled_model(launcher: Path, tmp_path: Path, tiny_model_path: Path) -> None:
    import SimpleITK as sitk

    image = tmp_path / "small.nrrd"
    volume = sitk.GetImageFromArray(np.random.default_rng(0).random((40, 48, 44)).astype(np.float32))
    volume.SetSpacing((3.0, 3.0, 3.0))
    sitk.WriteImage(volume, str(image))
    table = tmp_path / "l.csv"
    done = _run(launcher, "--model", "afids32", "--checkpoint", str(tiny_model_path), "--device", "cpu",
                str(image), str(tmp_path / "m.csv"), str(table))
    assert done.returncode == 0, done.stderr
    with table.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 32 and {r["model"] for r in rows} == {"tiny"}


def test_module_refuses_a_file_as_folder(tmp_path: Path) -> None:
    from napari_dglandmark.errors import DGLandmarkError

    (tmp_path / "f").write_text("")
    with pytest.raises(DGLandmarkError, match="not a folder"):
        write_module(tmp_path / "f")
    assert os.listdir(tmp_path) == ["f"]


def test_module_written_from_a_virtual_environment_runs_its_python(tmp_path: Path) -> None:
    """The launcher names the venv's interpreter (not the base Python it links to), so the venv's packages load."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
                   check=True, timeout=120)
    python = venv / "bin" / "python"
    # --system-site-packages exposes the *base* interpreter's packages; when the tests themselves run
    # in a venv (as CI does), the outer venv's site-packages must be added explicitly.
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    Path(purelib, "_outer_env.pth").write_text(
        "".join(f"import site; site.addsitedir({p!r})\n" for p in site.getsitepackages()))
    done = subprocess.run([str(python), "-m", "napari_dglandmark.cli", "slicer-module", str(tmp_path / "m")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    launcher = tmp_path / "m" / MODULE_NAME
    assert f"exec {python} -m napari_dglandmark.slicer_module" in launcher.read_text()
    probe = tmp_path / "probe.py"  # the launcher runs `python -m napari_dglandmark.slicer_module`: ask that Python
    probe.write_text("import sys; print(sys.prefix)\n")
    shown = subprocess.run([str(python), str(probe)], capture_output=True, text=True, timeout=60)
    assert shown.stdout.strip() == str(venv)
    done = subprocess.run([str(launcher), "--xml"], capture_output=True, text=True, env=SLICER_ENV, timeout=120)
    assert done.returncode == 0 and done.stdout == module_xml(), done.stderr
