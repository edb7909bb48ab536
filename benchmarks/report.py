"""Headline keys of the benchmark JSON and the printed table of ratios."""
import math

# segmentation comparisons whose outputs must be the same as the published protocol's
IDENTICAL_PARTS = ('crop', 'voc_image', 'voc_image_labels', 'large_image', 'resize_decoder_like',
                   'resize_dense_worst_case')


def _get(tree, *path):
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def flatten_headline(results: dict) -> dict:
    """Top-level keys (ratios ours / peer, seconds, MiB) picked from the sections that ran."""
    s = results['sections']
    out = {}
    peer = s.get('train_vs_peer')
    if peer:
        v = peer['variants']
        out.update(train_step_ratio_vs_hf=peer['ratio_fast_vs_peer'],
                   train_step_ratio_vs_hf_same_levers=peer['ratio_fast_vs_peer_fast'],
                   train_step_ratio_vs_hf_published_settings=peer['ratio_published_vs_peer'],
                   train_loss_abs_diff_vs_hf=peer['loss_check']['loss_abs_diff'])
        for name in v:
            out[f'train_images_per_s_{name}'] = v[name]['images_per_s']
            out[f'train_peak_mib_{name}'] = v[name]['peak_mib']
    tcl = s.get('seg_tcl')
    if tcl:
        out.update(tcl_seg_crop_speedup_vs_published=tcl['crop']['speedup'],
                   tcl_seg_crop_logits_max_abs_diff_vs_published=tcl['crop']['max_abs_diff'],
                   tcl_seg_crop_label_mismatch_vs_published=tcl['crop']['label_mismatch'],
                   tcl_seg_s_per_crop=tcl['crop']['ours_s'])
    for name, res in (s.get('train_full_configs') or {}).items():
        for recipe in ('published', 'fast'):
            out[f'{name}_train_images_per_s_{recipe}'] = res[f'{name}_{recipe}']['images_per_s']
            out[f'{name}_train_peak_mib_{recipe}'] = res[f'{name}_{recipe}']['peak_mib']
        out[f'{name}_train_speedup_fast_vs_published'] = res['speedup_fast_vs_published']
    seg = s.get('seg')
    if seg:
        out.update(seg_speedup_vs_published_protocol=seg['voc_image_labels']['speedup'],
                   seg_logits_speedup_vs_published_protocol=seg['voc_image']['speedup'],
                   seg_crop_speedup_vs_published_protocol=seg['crop']['speedup'],
                   seg_large_image_speedup_vs_published_protocol=seg['large_image']['speedup'],
                   seg_logits_max_abs_diff_vs_published_protocol=max(seg['crop']['max_abs_diff'],
                                                                     seg['voc_image']['max_abs_diff']),
                   seg_label_mismatch_vs_published_protocol=sum(seg[k]['label_mismatch'] for k in IDENTICAL_PARTS),
                   seg_resize_speedup_vs_published_protocol=seg['resize_decoder_like']['speedup'],
                   seg_resize_dense_speedup_vs_published_protocol=seg['resize_dense_worst_case']['speedup'],
                   seg_fast_speedup_vs_published_protocol=(seg['voc_image']['speedup']
                                                           * seg['voc_image_fast_vs_ours']['speedup']),
                   seg_fused_fp32_speedup_vs_published_protocol=(
                       seg['voc_image']['speedup'] * seg['voc_image_fused_fp32_vs_ours']['speedup']),
                   seg_fused_fp32_logits_max_abs_diff=seg['voc_image_fused_fp32_vs_ours']['max_abs_diff'],
                   seg_fast_label_mismatch_fraction=(seg['voc_image_fast_vs_ours']['label_mismatch']
                                                     / seg['voc_image_fast_vs_ours']['pixels']))
        for part in IDENTICAL_PARTS:
            out[f'seg_s_per_{part}'] = seg[part]['ours_s']
            out[f'seg_peak_mib_{part}'] = seg[part]['ours_peak_mib']
            out[f'seg_peak_mib_{part}_published_protocol'] = seg[part]['published_peak_mib']
    enc = s.get('encode_vs_peer')
    if enc:
        for kind in ('image', 'text'):
            out.update({f'encode_{kind}_{k}': val for k, val in enc[kind].items() if k.startswith('ratio_')})
    data = s.get('data')
    if data:
        for name in ('groupvit', 'pgseg'):
            rate = data[name]['samples_per_s_per_worker']
            out[f'data_samples_per_s_per_worker_{name}'] = rate
            fast = out.get(f'{name}_train_images_per_s_fast')
            if fast:
                out[f'data_workers_needed_{name}'] = math.ceil(fast / rate)
    return out


def _row(label, value, fmt='{:.3g}'):
    text = '-' if value is None else fmt.format(value)
    return f'  {label:<58} {text:>12}'


def format_table(results: dict) -> str:
    m, st = results['machine'], results['settings']
    lines = [f"machine: {m['cpu_model']} ({m['cpu_cores']} cores, {m['torch_threads']} torch threads), "
             f"{m.get('gpu', 'no GPU') if st['device'] == 'cuda' else 'CPU run'}; torch {m['torch']}, "
             f"transformers {m['transformers']}",
             f"settings: batch {st['batch']}, {st['repeats']} timed rounds after {st['warmup']} warm-up, "
             f"interleaved, medians; clock {st['clock']}{'; QUICK (tiny models)' if st['quick'] else ''}"]
    s = results['sections']
    peer = s.get('train_vs_peer')
    if peer:
        v = peer['variants']
        lines.append('training step, GroupViT vs transformers GroupViTModel (same weights, same inputs)')
        for name in ('ours_published', 'ours_fast', 'peer', 'peer_fast'):
            lines.append(_row(f'{name} images/s (peak MiB {v[name]["peak_mib"]:.0f})', v[name]['images_per_s']))
        lines += [_row('ratio ours fast / peer (train_step_ratio_vs_hf)', peer['ratio_fast_vs_peer']),
                  _row('ratio ours fast / peer with the same levers', peer['ratio_fast_vs_peer_fast']),
                  _row('ratio ours published / peer (both float32 defaults)', peer['ratio_published_vs_peer']),
                  _row('|loss ours - loss peer| (float32, same Gumbel noise)', peer['loss_check']['loss_abs_diff'],
                       '{:.2e}')]
        if 'achieved_tflops' in v['ours_fast']:
            peak = m.get('gpu_peak_bf16_tflops')
            lines.append(_row('achieved TFLOP/s ours fast' + (f' (device bf16 peak {peak:.0f})' if peak else ''),
                              v['ours_fast']['achieved_tflops']))
    for name, res in (s.get('train_full_configs') or {}).items():
        lines.append(f'training step, full {name} config (ours)')
        for recipe in ('published', 'fast'):
            r = res[f'{name}_{recipe}']
            lines.append(_row(f'{recipe} images/s (peak MiB {r["peak_mib"]:.0f})', r['images_per_s']))
        lines.append(_row('speedup fast / published', res['speedup_fast_vs_published']))
    enc = s.get('encode_vs_peer')
    if enc:
        lines.append('inference encoders vs peer (float32)')
        lines += [_row(f'{kind} {k}', val) for kind in ('image', 'text') for k, val in enc[kind].items()]
    seg = s.get('seg')
    if seg:
        lines.append(f"zero-shot segmentation, ours vs published protocol (crop {seg['crop_size']}, stride "
                     f"{seg['stride']}, crop batch {seg['crop_batch']})")
        for part, label in (('crop', f"one crop, {seg['num_classes']} classes"),
                            ('voc_image', f"VOC image {seg['voc_input_hw']}, {seg['num_classes']} classes: logits"),
                            ('voc_image_labels', f"VOC image {seg['voc_input_hw']}: logits, then labels at "
                                                 f"{seg['voc_original_hw']} (seg_speedup_vs_published_protocol)"),
                            ('large_image', f"large image {seg['large_original_hw']}, {seg['large_num_classes']} "
                                            f"classes ({seg['large_image_winning_classes']} can win)"),
                            ('resize_decoder_like', f"resize + arg-max to the large image only, decoder-like logits "
                                                    f"({seg['resize_decoder_like_winning_classes']} classes can win)"),
                            ('resize_dense_worst_case',
                             'resize + arg-max to the large image only, dense random logits (all can win)')):
            r = seg[part]
            lines.append(f'  {label}')
            lines.append(_row(f'  ours s (published {r["published_s"]:.3g} s)', r['ours_s']))
            lines.append(_row(f'  speedup (peak MiB ours {r["ours_peak_mib"]:.0f}, published '
                              f'{r["published_peak_mib"]:.0f})', r['speedup']))
        lines.append(_row('max |logits ours - published|', max(seg['crop']['max_abs_diff'],
                                                              seg['voc_image']['max_abs_diff']), '{:.2e}'))
        lines.append(_row('pixels with another label', sum(seg[k]['label_mismatch'] for k in IDENTICAL_PARTS), '{}'))
        fused = seg['voc_image_fused_fp32_vs_ours']
        lines.append(_row('VOC image logits, float32 fused attention: speedup',
                          seg['voc_image']['speedup'] * fused['speedup']))
        lines.append(_row('  max |logits - ours| (float rounding)', fused['max_abs_diff'], '{:.2e}'))
        fast = seg['voc_image_fast_vs_ours']
        lines.append(_row('VOC image logits, bf16 + fused attention (not identical): speedup',
                          seg['voc_image']['speedup'] * fast['speedup']))
        lines.append(_row('  its pixels with another label (fraction)', fast['label_mismatch'] / fast['pixels'],
                          '{:.2e}'))
    tcl = s.get('seg_tcl')
    if tcl:
        r = tcl['crop']
        lines.append(f"TCL per crop, ours vs the published computation (crop {tcl['crop_size']}, {tcl['num_classes']} "
                     f"classes, PAMR {'on' if tcl['pamr'] else 'off'}, kp_w {tcl['kp_w']})")
        lines.append(_row(f'  ours s (published {r["published_s"]:.3g} s)', r['ours_s']))
        lines.append(_row(f'  speedup (peak MiB ours {r["ours_peak_mib"]:.0f}, published '
                          f'{r["published_peak_mib"]:.0f})', r['speedup']))
        lines.append(_row('  max |logits ours - published|', r['max_abs_diff'], '{:.2e}'))
        lines.append(_row('  pixels with another label', r['label_mismatch'], '{}'))
    levers = s.get('levers')
    if levers:
        lines.append(f"one lever at a time on GroupViT (batch {levers['batch']}): speedup over the published recipe")
        lines += [_row(name, value) for name, value in levers['speedup_vs_published'].items()]
    data = s.get('data')
    if data:
        lines.append(f"data loading, one worker, {data['image_side_px']} px JPEG shards")
        for name in ('groupvit', 'pgseg'):
            lines.append(_row(f'{name} transforms: samples/s per worker', data[name]['samples_per_s_per_worker']))
    lines.append(f"total {results['total_wall_s']} s")
    return '\n'.join(lines)
