"""Writes the first fenced code block of LANG that follows the line naming STEP in README.md.

    python3 readme_block.py README.md "Run the hub as its own account" ini OUT

The VM tests install from the README's own text, so a README that is wrong fails them.
"""

import sys


def main():
    readme, step, lang, out = sys.argv[1:]
    lines = open(readme, encoding="utf-8").read().splitlines()
    start = next((i for i, line in enumerate(lines) if step in line), None)
    if start is None:
        sys.exit(f"readme_block: no line of {readme} names '{step}'")
    block = None
    for i in range(start, len(lines)):
        if lines[i].strip() == f"```{lang}":
            indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
            block = []
            for line in lines[i + 1 :]:
                if line.strip() == "```":
                    break
                block.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            break
    if not block:
        sys.exit(f"readme_block: no ```{lang} block after '{step}' in {readme}")
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n".join(block) + "\n")


if __name__ == "__main__":
    main()
