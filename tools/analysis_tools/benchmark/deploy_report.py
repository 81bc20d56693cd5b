"""The deployment section of docs/benchmarks.md (``deploy.py``'s results)."""
from typing import List

from .fmt import num, table
from .machine import repo_path
from .targets import INT8_TARGET_BY_CASE, TARGETS, verdict_word


def render_deployment(dep: dict) -> List[str]:
    lines = ['## Deployment (CPU)', '',
             'Measured by its own run (its command and machine below). End '
             'to end: a decoded image in, masks at the original size out '
             '(test pipeline, preprocessing, network, NMS, masks); median '
             'of the timed repetitions after warm-up; speed rows keep '
             '`score_thr=0`, so every path makes 100 masks. Ratios are to '
             'PyTorch fp32 (NCHW) in the same run. ONNX Runtime '
             f'{dep["versions"]["onnxruntime"]}, OpenVINO '
             f'{dep["versions"]["openvino"]}.', '',
             '```', dep['command'], '```', '']
    lines += table(['', ''], [[k, v] for k, v in dep['machine'].items()])
    latency = dep['latency']
    names = list(latency)
    paths = []
    for name in names:
        paths += [p for p in latency[name]['seconds'] if p not in paths]
    header = ['path'] + [f'{n} {latency[n]["size"][0]}x'
                         f'{latency[n]["size"][1]}: s (ratio)' for n in names]
    rows = []
    for path in paths:
        row = [path]
        for n in names:
            sec = latency[n]['seconds'].get(path)
            row.append('-' if sec is None else
                       f'{num(sec, 3)} ({num(latency[n]["ratio"][path], 2)})')
        rows.append(row)
    lines += table(header, rows)
    if not dep['openvino_bf16']:
        lines += ['OpenVINO reports no BF16 capability on this CPU: no '
                  'OpenVINO bf16 row.', '']
    peak = dep['peak']
    verdicts = []
    for n in names:
        best = latency[n]['best']
        ratio = latency[n]['ratio'][best]
        use_bf16 = 'bf16' in best and peak['bf16']
        limit = peak['bf16'] if use_bf16 else peak['fp32']
        verdicts.append([
            n, best, num(ratio, 2),
            verdict_word(TARGETS['deploy_best_path'].met(ratio)),
            num(latency[n]['gflop'], 1),
            num(latency[n]['best_gflops'], 1),
            f'{num(limit, 0)} ({"bf16" if use_bf16 else "fp32"})',
            f'{100 * latency[n]["best_gflops"] / limit:.0f}%'])
    lines += [f'Target: {TARGETS["deploy_best_path"].claim} <= '
              f'{TARGETS["deploy_best_path"].bound:g}.', '']
    lines += table(['model', 'best path', 'ratio', 'verdict',
                     'GFLOP / image (convs)', 'achieved GFLOP/s',
                     'peak estimate GFLOP/s', 'of peak'], verdicts)
    lines += [f'Peak estimate = cores x clock x FLOPs/cycle = '
              f'{peak["cores"]} x {peak["clock_ghz"]} GHz x '
              f'{peak["fp32_per_cycle"]} (fp32'
              + (f'; bf16 {peak["bf16_per_cycle"]}' if peak['bf16_per_cycle']
                 else '') + '), from /proc/cpuinfo (clock: the highest '
              '`cpu MHz`; FLOPs/cycle from the vector flags: 2 FMA units x '
              'lanes x 2, 32 for AMD\'s 256-bit-wide AVX-512, bf16 dot '
              'products 2x, AMX ~1024). The GFLOP count is the convs\' and '
              'linears\' multiply-adds x 2; achieved = count / best '
              'latency, so the pipeline and mask steps count against it.',
              '']
    lines += int8_lines(dep)
    lines += overhead_lines(dep.get('lite_overhead'))
    lines += large_image_lines(dep.get('large_image'))
    acc = dep.get('accuracy')
    if not acc:
        lines += ['No accuracy rows: no demo checkpoint (`make demo`).', '']
        return lines
    ref = acc['ap']['PyTorch fp32']
    rows = [[k, num(v['segm_mAP'], 3), num(v['bbox_mAP'], 3),
             f'{v["segm_mAP"] - ref["segm_mAP"]:+.4f}']
            for k, v in acc['ap'].items()]
    lines += ['### Accuracy of the exported model', '',
              f'`{repo_path(acc["checkpoint"])}` (EmbedMask-Lite, `make '
              'demo`) on the '
              'built-in val split, with the config\'s own test_cfg; the '
              'exported rows run the graph exported in this run through '
              '`EmbedMaskONNXModel` (what `tools/deployment/onnx_test.py` '
              'runs). Target: within '
              f'{TARGETS["deploy_ap"].bound:g} segm mAP of PyTorch.', '']
    lines += table(['path', 'segm mAP', 'bbox mAP', 'segm vs PyTorch fp32'],
                    rows)
    rows = [[k, v['matched'], v['unmatched'], num(v['min_iou'], 4),
             num(v['mean_iou'], 4), num(100 * v['share_at_least_098'], 1)]
            for k, v in acc['agreement'].items()]
    lines += ['bf16 and INT8 against fp32, detection by detection (fp32 '
              'detections above 0.3 matched to one of the same class with '
              'box IoU >= 0.9; INT8 rows against the same runtime\'s fp32):',
              '']
    lines += table(['path', 'matched', 'unmatched', 'min mask IoU',
                     'mean mask IoU', '% with IoU >= 0.98'], rows)
    return lines


def overhead_lines(overhead) -> List[str]:
    """Where one Lite call's time goes, dense vs compact mask outputs."""
    if not overhead:
        return []
    stages = ('pipeline', 'preprocess', 'graph', 'masks', 'total')
    rows = [[contract] + [num(1e3 * row[k], 1) for k in stages]
            for contract, row in overhead.items()]
    return ['### Where the Lite call\'s time goes', '',
            'EmbedMask-Lite 320x320, OpenVINO fp32, 100 detections: each '
            'stage of `EmbedMaskONNXModel` timed as the call runs it '
            '(`tools/analysis_tools/benchmark/runtime_profile.py`), median '
            'ms. Dense: the graph writes 100 probability maps at the input '
            'size and the NumPy step resizes and thresholds each. Compact '
            '(the default): the graph writes the mask formula\'s terms and '
            'the mask head evaluates each mask only where it can be '
            'foreground.', ''] + table(['mask outputs'] + list(stages),
                                        rows)


def large_image_lines(large) -> List[str]:
    """Peak RSS and time per path on the large photo; output bytes."""
    if not large:
        return []
    size = f'{large["size"][1]}x{large["size"][0]}'
    rows = [[path, num(r['seconds'], 2), num(r['peak_rss_mb'], 0),
             num(r['rss_after_load_mb'], 0), r['detections']]
            for path, r in large['rows'].items()]
    ref = large['rows']['pytorch']
    onnx = large['rows']['onnxruntime-compact']
    target = TARGETS['large_photo_vs_pytorch']
    worst = max(onnx['peak_rss_mb'] / ref['peak_rss_mb'],
                onnx['seconds'] / ref['seconds'])
    verdict = verdict_word(target.met(worst))
    lines = [f'### One {size} photo', '',
             f'The demo model on `{repo_path(large["image"])}` (the val '
             'image with the '
             f'most objects) resized to {size}, each path in its own '
             'process (`tools/analysis_tools/benchmark/large_image.py`): '
             '`pytorch` is `EmbedMaskInferencer`, the others '
             '`EmbedMaskONNXModel` on the graph exported with the compact '
             'or dense mask outputs. '
             f'{large.get("rounds", 1)} rounds, each running every path in '
             'turn in a fresh process; time: the median of all timed calls '
             f'({large.get("reps", 2)} per process, after one untimed); '
             'peak RSS: the median of the processes\' peaks (VmHWM, model '
             'load included).', '']
    lines += table(['path', 's / image', 'peak RSS MB',
                     'RSS after load MB', 'detections'], rows)
    lines += [f'Target: {target.claim} <= {target.bound:g} (measured: '
              f'{worst:.2f}): {verdict}.', '']
    rows = [[contract, ', '.join(f'{k} {v["shape"]}'
                                 for k, v in info['outputs'].items()),
             num(info['total_bytes'] / 2**20, 1)]
            for contract, info in large['output_bytes'].items()]
    first = next(iter(large['output_bytes'].values()))
    lines += [f'Graph outputs at {first["size"][0]}x{first["size"][1]} for '
              f'{first["detections"]} detections (N):', '']
    lines += table(['mask outputs', 'outputs (float32 / int64)', 'MiB'],
                    rows)
    return lines


def int8_lines(dep: dict) -> List[str]:
    """INT8 latency verdicts with achieved GOP/s beside the int8 peak, and
    the AP verdict."""
    latency, peak = dep['latency'], dep['peak']
    drop = TARGETS['int8_ap_drop'].bound
    rows = []
    for name, case in latency.items():
        int8 = {k: v for k, v in case['ratio'].items() if 'INT8' in k}
        if not int8:
            continue
        best = min(int8, key=int8.get)
        key = INT8_TARGET_BY_CASE.get(name)
        target = TARGETS[key].bound if key else None
        gops = case['gflop'] / case['seconds'][best]
        rows.append([name, best, num(int8[best], 2),
                     '-' if target is None else f'<= {target}',
                     '-' if key is None else
                     verdict_word(TARGETS[key].met(int8[best])),
                     num(gops, 1), num(peak.get('int8') or 0, 0),
                     f'{100 * gops / peak["int8"]:.0f}%'
                     if peak.get('int8') else '-'])
    if not rows:
        return []
    units = 'with INT8 dot-product units (VNNI / AMX)' if \
        peak.get('int8_dot_product') else 'WITHOUT INT8 dot-product units ' \
        '(no VNNI, no AMX): the latency targets are set for CPUs that have ' \
        'them, so these verdicts do not decide them'
    lines = ['### INT8', '',
             'The exported graph quantized by `tools/deployment/quantize.py` '
             '(backbone, neck and towers INT8; the mask path and the decoding '
             'tail float; calibration here: 8 generated images for the speed '
             'rows, 64 train images for the accuracy rows). Targets: best '
             f'INT8 path <= {TARGETS["int8_r50"].bound:g}x PyTorch fp32 for '
             f'R-50 800x1333, <= {TARGETS["int8_lite"].bound:g}x for Lite '
             '320x320, on a CPU with INT8 dot-product units; segm mAP within '
             f'{drop:g} of fp32 (the Targets table says why). This CPU is '
             f'{units}.', '']
    lines += table(['model', 'best INT8 path', 'ratio', 'target', 'verdict',
                     'achieved GOP/s', 'int8 peak estimate GOP/s',
                     'of peak'], rows)
    acc = dep.get('accuracy')
    if acc:
        ref = acc['ap'].get('OpenVINO fp32') or acc['ap']['PyTorch fp32']
        verdicts = [[k, num(v['segm_mAP'], 3),
                     f'{v["segm_mAP"] - ref["segm_mAP"]:+.4f}',
                     verdict_word(TARGETS['int8_ap_drop'].met(
                         ref['segm_mAP'] - v['segm_mAP']))]
                    for k, v in acc['ap'].items() if 'INT8' in k]
        lines += ['INT8 accuracy against the exported fp32 model (the '
                  'accuracy table below has every row):', '']
        lines += table(['path', 'segm mAP', 'vs fp32', 'verdict'],
                        verdicts)
    lines += [f'int8 peak estimate = cores x clock x '
              f'{peak.get("int8_per_cycle")} int8 ops/cycle (2 per '
              'multiply-add: AMX ~2048, VNNI 4x the fp32 lanes, AVX2 / '
              'AVX-512 without VNNI ~2x); achieved = the convs\' GFLOP / '
              'latency, pipeline and masks included.', '']
    return lines
