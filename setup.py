"""anomaly_seg_ros: an ament_python ROS 2 package that is also pip-installable.

``colcon build`` uses the data_files below to install the launch, config and message
files into ``share/anomaly_seg_ros``; ``pip install -e .`` gives the same Python package and
the ``anomaly-seg`` command without ROS.
"""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "anomaly_seg_ros"
CPU_RUNTIMES = ["onnxruntime>=1.20,<2", "openvino>=2025.0,<2027", "onnx>=1.17,<2", "onnxscript>=0.2,<1"]

setup(
    name=PACKAGE,
    version="0.1.0",
    description="Road-scene anomaly segmentation for ROS 2: scorers, alerts, bag replay, training and evaluation.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.rviz")),
        (f"share/{PACKAGE}/msg", glob("msg/msg/*.msg")),
    ],
    install_requires=[
        # torch is installed first by scripts/setup.sh so that the CPU build is chosen on
        # machines without a GPU; any torch >= 2.1 satisfies the package.
        "torch>=2.1",
        "numpy>=1.24",
        "opencv-python-headless>=4.8",
        "rosbags>=0.10",
        "safetensors>=0.4",
        "PyYAML>=6.0",
        "tqdm>=4.60",
        "tensorboard>=2.10",
        "matplotlib>=3.7",
    ],
    extras_require={
        # ONNX Runtime and OpenVINO backends (model.backend: auto on CPU picks them when installed).
        # Tested with onnxruntime 1.32.0, openvino 2026.4.1, onnx 1.23.2, onnxscript 0.7.2.
        "cpu-runtimes": CPU_RUNTIMES,
        # The tests check every installed backend against eager, so CI installs the runtimes too.
        "test": ["pytest>=7", "scikit-learn>=1.3", "ruff>=0.4", *CPU_RUNTIMES],
        # `anomaly-seg bag --ray ADDRESS`: the driver and every node of the cluster need the same release
        "ray": ["ray==2.60.0"],
    },
    tests_require=["pytest"],
    zip_safe=True,
    entry_points={
        "console_scripts": [
            "anomaly-seg = anomaly_seg_ros.tools.cli:main",
            "anomaly_seg_node = anomaly_seg_ros.ros:main",
        ],
    },
)
