"""The fenced blocks of README.md and the marker before each one, read by tests/test_readme.py.

Every fenced block has an HTML comment right before it (GitHub does not show it) that says what the test does
with it:

    <!-- readme: run -->                          run it as written (bash; python blocks with python)
    <!-- readme: skip, needs 8 GPUs -->            a command that cannot run here, and why
    <!-- readme: text, sample output -->           not a command: output, a layout, a config excerpt

A `run` marker may take more lines, one `key: value` each (keys may repeat):

    replace: OLD -> NEW       run NEW where the block says OLD (OLD must be in the block, not as part of a
                              longer word or number): a smaller run, a stand-in file; `{port}` in NEW is a free
                              local port
    omit: TEXT | WHY          leave out the commands that contain TEXT
    before: COMMAND           run first (bash): a fixture laid out like the real data, a stand-in checkpoint
    env: NAME=VALUE           set for the block's commands
    continues                 a python block that runs after the code of the previous python block
    creates: PATH ...         each (a glob) must match a file or folder that the block wrote or changed
    prints: TEXT              must appear in the block's output (stdout and stderr)
    status: N                 the block's exit status (default 0)
    app: URL                  each command starts the web app, which must answer at URL; Chromium then
                              segments an example image on the page and the app is stopped
"""
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

FENCE = re.compile(r'^(\s*)```(\S*)\s*$')
MARKER = re.compile(r'<!--\s*readme:(.*?)-->\s*$', re.S)
KINDS = ('run', 'skip', 'text')
SHELLS = ('bash', 'sh', 'shell')
LIST_KEYS = ('replace', 'omit', 'before', 'env', 'creates', 'prints')
SINGLE_KEYS = ('status', 'app')
FLAGS = ('continues',)
MARKER_HELP = ('<!-- readme: run -->, <!-- readme: skip, WHY --> or <!-- readme: text, WHAT --> '
               '(see tests/readme_blocks.py)')


class MarkerError(ValueError):
    """A fenced block without a marker, or a marker that cannot be followed; the message names the line."""


@dataclass
class Block:
    line: int                  # line of the opening fence in README.md (1-based)
    lang: str
    code: str                  # the block's text as the README shows it
    kind: str = ''
    reason: str = ''           # skip and text: why / what
    replace: List[Tuple[str, str]] = field(default_factory=list)
    omit: List[Tuple[str, str]] = field(default_factory=list)
    before: List[str] = field(default_factory=list)
    env: List[Tuple[str, str]] = field(default_factory=list)
    creates: List[str] = field(default_factory=list)
    prints: List[str] = field(default_factory=list)
    status: int = 0
    app: Optional[str] = None
    continues: bool = False
    error: str = ''            # why the marker cannot be followed (the block's test fails with it)

    @property
    def where(self) -> str:
        return f'README.md:{self.line}'

    @property
    def is_python(self) -> bool:
        return self.lang == 'python'

    def title(self) -> str:
        """The block's first command line, for test ids and reports."""
        lines = [line.strip() for line in self.code.splitlines() if line.strip() and not line.startswith('#')]
        first = lines[0] if lines else '(empty)'
        return first if len(first) <= 70 else first[:67] + '...'


def read_blocks(readme: Path) -> Tuple[List[Block], List[str]]:
    """-> (every fenced block with its marker, one error line per unmarked block or bad marker)."""
    lines = readme.read_text(encoding='utf-8').splitlines()
    blocks, errors, index = [], [], 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent, lang = opening.groups()
        end = index + 1
        while end < len(lines) and lines[end].strip() != '```':
            end += 1
        body = [line[len(indent):] if line.startswith(indent) else line for line in lines[index + 1:end]]
        block = Block(line=index + 1, lang=lang, code='\n'.join(body) + '\n')
        try:
            parse_marker(block, marker_before(lines, index))
        except MarkerError as e:
            block.error = f'{block.where} (```{lang} {block.title()}): {e}'
            errors.append(block.error)
        blocks.append(block)
        index = end + 1
    return blocks, errors


def marker_before(lines: List[str], fence: int) -> str:
    """The `<!-- readme: ... -->` comment that ends on the last non-blank line before the fence."""
    end = fence - 1
    while end >= 0 and not lines[end].strip():
        end -= 1
    if end < 0 or not lines[end].rstrip().endswith('-->'):
        raise MarkerError(f'no marker before the block: add {MARKER_HELP}')
    start = end
    while start > 0 and '<!--' not in lines[start]:
        start -= 1
    match = MARKER.search('\n'.join(lines[start:end + 1]))
    if not match:
        raise MarkerError(f'the comment before the block is not a readme marker: use {MARKER_HELP}')
    return match.group(1)


def parse_marker(block: Block, marker: str) -> None:
    head, *rest = [line.strip() for line in marker.strip().splitlines()]
    kind, _, reason = (part.strip() for part in head.partition(','))
    if kind not in KINDS:
        raise MarkerError(f"unknown marker kind {kind!r}: use {MARKER_HELP}")
    block.kind, block.reason = kind, reason
    if kind != 'run':
        if not reason:
            raise MarkerError(f'a {kind} marker says why: <!-- readme: {kind}, ... -->')
        if rest:
            raise MarkerError(f'a {kind} marker takes no keys (found {rest[0]!r})')
        return
    if block.lang not in SHELLS + ('python',):
        raise MarkerError(f'a ```{block.lang} block cannot run: mark it skip or text')
    for line in filter(None, rest):
        key, colon, value = (part.strip() for part in line.partition(':'))
        if key in FLAGS and not colon:
            setattr(block, key, True)
        elif key in LIST_KEYS and value:
            getattr(block, key).extend(_parse_value(key, value))
        elif key in SINGLE_KEYS and value:
            setattr(block, key, int(value) if key == 'status' and value.lstrip('-').isdigit() else value)
        else:
            raise MarkerError(f'cannot read marker line {line!r}: keys are '
                              f"{', '.join(LIST_KEYS + SINGLE_KEYS + FLAGS)} (see tests/readme_blocks.py)")
    if not isinstance(block.status, int):
        raise MarkerError(f'status must be a number, got {block.status!r}')
    for old, _ in block.replace:
        if not whole(old).search(block.code):
            raise MarkerError(f'replace: {old!r} is not in the block (was the command changed?)')
    for text, _ in block.omit:
        if text not in block.code:
            raise MarkerError(f'omit: {text!r} is not in the block (was the command changed?)')


def _parse_value(key: str, value: str) -> list:
    if key == 'replace':
        old, arrow, new = value.partition(' -> ')
        if not arrow or not old.strip():
            raise MarkerError(f'replace takes OLD -> NEW, got {value!r}')
        return [(old.strip(), new.strip())]
    if key == 'omit':
        text, bar, why = (part.strip() for part in value.partition('|'))
        if not bar or not text or not why:
            raise MarkerError(f'omit takes TEXT | WHY, got {value!r}')
        return [(text, why)]
    if key == 'env':
        name, equals, setting = value.partition('=')
        if not equals or not name.isidentifier():
            raise MarkerError(f'env takes NAME=VALUE, got {value!r}')
        return [(name, setting)]
    return value.split() if key == 'creates' else [value]


def logical_lines(code: str) -> List[str]:
    """Shell text -> commands: backslash continuations joined, blank and comment-only lines dropped."""
    commands, current = [], ''
    for line in code.splitlines():
        if line.rstrip().endswith('\\'):
            current += line.rstrip()[:-1] + ' '
            continue
        current += line
        if current.strip() and not current.lstrip().startswith('#'):
            commands.append(current.strip())
        current = ''
    return commands


def runnable_code(block: Block, placeholders: dict) -> Tuple[str, List[str]]:
    """-> (the code to run: the block with its replacements, less its omitted commands; what was omitted and
    why). `placeholders` fills `{name}` in the replacement texts."""
    code = block.code
    for old, new in block.replace:
        code = whole(old).sub(lambda _: fill(new, placeholders), code)
    if block.is_python or not block.omit:
        return code, []
    kept, omitted = [], []
    for command in logical_lines(code):
        why = next((why for text, why in block.omit if text in command), None)
        (omitted if why else kept).append(f'{command}  ({why})' if why else command)
    return '\n'.join(kept) + '\n', omitted


def whole(text: str) -> re.Pattern:
    """`text` where it is not part of a longer word or number ('--epochs 3' does not match '--epochs 30')."""
    return re.compile((r'(?<!\w)' if re.match(r'\w', text) else '') + re.escape(text)
                      + (r'(?!\w)' if re.search(r'\w$', text) else ''))


def fill(text: str, placeholders: dict) -> str:
    return re.sub(r'\{(\w+)\}', lambda m: str(placeholders.get(m.group(1), m.group(0))), text)
