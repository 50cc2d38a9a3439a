#!/usr/bin/env python3
"""Every module declares exactly the modules it imports: no undeclared import that works only
through another module's dependency, no declared dependency that nothing imports.

    python3 scripts/check_module_graph.py

Reads Package.swift's targets (name, dependencies, path) and the import lines of each target's
sources. System modules (Testing, Synchronization, Glibc...) are not targets and are ignored.
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def targets():
    text = open(os.path.join(ROOT, "Package.swift")).read()
    found = {}
    for m in re.finditer(r'\.(target|testTarget|executableTarget)\(\s*name:\s*"(\w+)"', text):
        kind, name = m.group(1), m.group(2)
        # The call's text: up to the matching parenthesis.
        depth, i = 0, m.start()
        while True:
            c = text[i]
            depth += c == "("
            depth -= c == ")"
            i += 1
            if depth == 0 and c == ")":
                break
        call = text[m.start():i]
        deps = set()
        d = re.search(r"dependencies:\s*\[(.*?)\]\s*(,|\))", call, re.S)
        if d:
            listed = d.group(1)
            deps |= set(re.findall(r'\.product\(name:\s*"(\w+)"', listed))
            deps |= set(re.findall(r'"(\w+)"', re.sub(r"\.product\([^)]*\)", "", listed)))
        p = re.search(r'path:\s*"([^"]+)"', call)
        path = p.group(1) if p else ("Tests/" if kind == "testTarget" else "Sources/") + name
        found[name] = (deps, path)
    return found


def imports(path):
    result = set()
    for folder, _, files in os.walk(os.path.join(ROOT, path)):
        for f in files:
            if f.endswith(".swift"):
                for line in open(os.path.join(folder, f)):
                    m = re.match(r"\s*(?:@testable\s+|@_exported\s+)?import\s+(\w+)", line)
                    if m:
                        result.add(m.group(1))
            elif f.endswith(".c") or f.endswith(".h"):
                pass
    return result


def main():
    all_targets = targets()
    products = {"ArgumentParser", "Logging", "Hummingbird", "HummingbirdCore", "ServiceLifecycle", "UnixSignals", "HTTPTypes", "NIOCore", "NIOPosix", "SQLiteNIO"}
    known = set(all_targets) | products
    problems = 0
    for name, (deps, path) in sorted(all_targets.items()):
        used = imports(path) & known
        used.discard(name)
        for missing in sorted(used - deps):
            print(f"FAIL {name}: imports {missing} without declaring it")
            problems += 1
        for unused in sorted(deps - used):
            print(f"FAIL {name}: declares {unused} but never imports it")
            problems += 1
    print(f"{len(all_targets)} targets, {problems} problems")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
