"""Every engine config and kernel knob cuDNN offers for our attention graphs, timed.

    python3 bench/cudnn_configs/sweep.py [--bench build-gpu/attention_bench] [--out DIR]
                                         [--budget-s 480] [-- attention_bench arguments]

One GPU. First attention_bench runs once with SY_CUDNN_PLANS=1, which lists every config the
heuristics return for the forward and the backward graphs (engine, knob values, the engine's knob
ranges, whether its plan finalizes). Then it runs again for each other config
(SY_CUDNN_FWD_PLAN / SY_CUDNN_BWD_PLAN = N) and for each value of each knob of the first config
(SY_CUDNN_FWD_KNOBS / SY_CUDNN_BWD_KNOBS = TYPE=VALUE). Each row gives the forward, the
deterministic backward and the nondeterministic backward in ms (attention_bench's medians), or
"-" where cuDNN refused the config and our flash kernels ran. The last lines name the fastest
setting of each pass against the default (heuristics' first config). Every run's output is in
DIR/runs.log, the listing in DIR/list.log. docs/cuda.md has the variables.
"""
import argparse
import os
import re
import subprocess
import sys
import time

parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
parser.add_argument('--bench', default='build-gpu/attention_bench')
parser.add_argument('--out', default='cudnn_configs_out')
parser.add_argument('--budget-s', type=float, default=480, help='no run starts after this')
parser.add_argument('bench_args', nargs='*', help='after --: attention_bench arguments')
args = parser.parse_args()
deadline = time.time() + args.budget_s
os.makedirs(args.out, exist_ok=True)
runs_log = open(os.path.join(args.out, 'runs.log'), 'w')
bench_cmd = [args.bench, '--no-reference', *args.bench_args]
ROW = re.compile(r'\| (cudnn[^|]*?) \| (forward|backward) \| ([0-9.]+) \|')


def run(extra, label):
    """attention_bench with `extra` in its environment: {pass: ms or None}, or None past the budget."""
    if time.time() > deadline:
        print(f'| {label} | skipped: budget | | |')
        return None
    proc = subprocess.run(bench_cmd, env=dict(os.environ, **extra), capture_output=True, text=True,
                          timeout=300)
    runs_log.write(f'==== {label}: {extra}\n{proc.stdout}\n{proc.stderr}\n')
    runs_log.flush()
    if proc.returncode != 0:
        sys.exit(f'cudnn_configs: {label}: attention_bench exited {proc.returncode}; '
                 f'see {args.out}/runs.log')
    ms = {}
    for m in ROW.finditer(proc.stdout):
        ms[(m.group(1), m.group(2))] = float(m.group(3))
    times = {'forward': ms.get(('cudnn', 'forward')),
             'backward': ms.get(('cudnn', 'backward')),
             'nondeterministic': ms.get(('cudnn nondeterministic', 'backward'))}
    cells = ' | '.join('-' if v is None else f'{v:.3f}' for v in times.values())
    print(f'| {label} | {cells} |', flush=True)
    return times


# The listing.
listing = subprocess.run(bench_cmd + ['--iters', '1', '--warmup', '0'],
                         env=dict(os.environ, SY_CUDNN_PLANS='1'), capture_output=True, text=True,
                         timeout=600)
open(os.path.join(args.out, 'list.log'), 'w').write(listing.stdout + '\n' + listing.stderr)
CONFIG = re.compile(r'cudnn_attention_(forward|backward) (\S+) config (\d+): engine (\d+), '
                    r'knobs (\S+?)(, NONDETERMINISTIC)?; the engine.s knobs: (.*)$')
PLAN = re.compile(r'cudnn_attention_(forward|backward) .* plan (\d+) finalizes')
firsts, plans = {}, {'forward': 0, 'backward': 0}
print('configs heuristics return (the backward listed twice: deterministic, then not):')
for line in listing.stderr.splitlines():
    if m := CONFIG.match(line):
        print('  ' + line)
        if not m.group(6):
            firsts.setdefault(m.group(1), (m.group(5), m.group(7)))
    elif m := PLAN.match(line):
        plans[m.group(1)] = max(plans[m.group(1)], int(m.group(2)) + 1)

print('\n| setting | forward ms | backward ms | nondeterministic backward ms |\n|---|---|---|---|')
results = [('default', {}, run({}, 'default'))]
for pass_, var in (('forward', 'SY_CUDNN_FWD_PLAN'), ('backward', 'SY_CUDNN_BWD_PLAN')):
    for index in range(1, plans[pass_]):
        extra = {var: str(index)}
        results.append((f'{var}={index}', extra, run(extra, f'{var}={index}')))
KNOB = re.compile(r'(\d+) \[(-?\d+)\.\.(-?\d+) step (-?\d+)\]')
for pass_, var in (('forward', 'SY_CUDNN_FWD_KNOBS'), ('backward', 'SY_CUDNN_BWD_KNOBS')):
    if pass_ not in firsts:
        continue
    knobs, ranges = firsts[pass_]
    current = dict(k.split('=') for k in knobs.split(',')) if knobs != 'none' else {}
    for m in KNOB.finditer(ranges):
        knob_type, low, high, stride = (int(g) for g in m.groups())
        for value in range(low, high + 1, max(stride, 1)):
            if current.get(str(knob_type)) != str(value):
                extra = {var: f'{knob_type}={value}'}
                label = f'{var}={knob_type}={value}'
                results.append((label, extra, run(extra, label)))

default = results[0][2] or {}
# Each pass against the settings of its own variables only: the other pass's runs repeat the
# default.
for pass_, prefix in (('forward', 'SY_CUDNN_FWD'), ('backward', 'SY_CUDNN_BWD'),
                      ('nondeterministic', 'SY_CUDNN_BWD')):
    timed = [(t[pass_], label) for label, _, t in results
             if t and t[pass_] is not None and (label == 'default' or label.startswith(prefix))]
    if not timed:
        print(f'fastest {pass_}: none ran on cuDNN')
        continue
    best_ms, best_label = min(timed, key=lambda t: t[0])
    base = default.get(pass_)
    print(f'fastest {pass_}: {best_label} at {best_ms:.3f} ms (default: '
          f'{"-" if base is None else f"{base:.3f}"})')
