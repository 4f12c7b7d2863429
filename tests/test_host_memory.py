"""The CLI's re-execution with glibc's hugetlb tunable: when it applies and what it keeps."""

import pytest

from jaxvision.backend import host_memory

GLIBC = ("glibc", "2.36")


def test_adds_the_tunable_on_glibc_with_thp_in_madvise_mode():
    env = host_memory.huge_page_environment({"HOME": "/h"}, GLIBC, "madvise")
    assert env == {"HOME": "/h", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


def test_appends_to_the_users_tunables():
    given = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
    env = host_memory.huge_page_environment(given, GLIBC, "madvise")
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert given == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}  # not mutated


@pytest.mark.parametrize(
    "environ, libc, thp",
    [
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, GLIBC, "madvise"),  # the user's choice
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, GLIBC, "madvise"),  # already re-executed
        ({}, GLIBC, "always"),  # the kernel already backs large mappings with huge pages
        ({}, GLIBC, "never"),
        ({}, GLIBC, ""),  # no THP information (not Linux, or no sysfs)
        ({}, ("glibc", "2.31"), "madvise"),  # the tunable arrived in glibc 2.35
        ({}, ("", ""), "madvise"),  # musl and other C libraries
    ],
)
def test_leaves_the_environment_alone(environ, libc, thp):
    assert host_memory.huge_page_environment(environ, libc, thp) is None


def test_reads_the_bracketed_thp_mode(tmp_path):
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert host_memory._thp_mode(str(path)) == "madvise"
    assert host_memory._thp_mode(str(tmp_path / "missing")) == ""
