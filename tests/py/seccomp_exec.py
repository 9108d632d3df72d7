"""Run a command under an OCI seccomp profile, as a container runtime would apply it: every
system call the profile's rules allow is allowed, everything else fails with the profile's
default errno. Used by tests/tests/seccomp_b.rs to run the release daemon under
deploy/seccomp/shadow.json without a container runtime.

    python3 seccomp_exec.py PROFILE.json [--drop NAME]... -- COMMAND [ARG]...

--drop removes a call from the allowed ones (to show the filter is in force).
"""

import errno
import json
import os
import sys

import seccomp  # Debian's python3-seccomp (libseccomp)


def main() -> None:
    args = sys.argv[1:]
    if "--" not in args or not args:
        sys.exit("usage: seccomp_exec.py PROFILE.json [--drop NAME]... -- COMMAND [ARG]...")
    split = args.index("--")
    opts, command = args[:split], args[split + 1 :]
    profile_path, rest = opts[0], opts[1:]
    drop = {rest[i + 1] for i in range(0, len(rest), 2) if rest[i] == "--drop"}
    with open(profile_path) as f:
        profile = json.load(f)
    if profile.get("defaultAction") != "SCMP_ACT_ERRNO":
        sys.exit(f"{profile_path}: defaultAction must be SCMP_ACT_ERRNO")
    default_errno = profile.get("defaultErrnoRet", errno.EPERM)
    filt = seccomp.SyscallFilter(defaction=seccomp.ERRNO(default_errno))
    unknown = []
    for rule in profile["syscalls"]:
        if rule["action"] != "SCMP_ACT_ALLOW":
            sys.exit(f"{profile_path}: only SCMP_ACT_ALLOW rules are expected")
        for name in rule["names"]:
            if name in drop:
                continue
            try:
                filt.add_rule(seccomp.ALLOW, name)
            except (RuntimeError, ValueError):
                # A call this architecture does not have (runtimes skip them too).
                unknown.append(name)
    # What a container runtime leaves the process: no new privileges, then the filter.
    filt.set_attr(seccomp.Attr.CTL_NNP, 1)
    filt.load()
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
