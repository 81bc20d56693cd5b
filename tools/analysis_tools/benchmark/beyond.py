"""The "large images and video" section of ``make bench``: the demo model
on generated large images (plain predict, SAHI with our model, our sliced
inference; ``tools/analysis_tools/sliced_eval.py``) and on synthetic videos
(instance IDs by IoU + embedding vs IoU alone;
``tools/analysis_tools/track_eval.py``). Those scripts measure and render
their own tables; this module runs them with the demo checkpoint, adds the
machine table, and renders the section."""
import time
from typing import List

from .deploy import DEMO_CONFIG, demo_checkpoint
from .machine import (ROOT, command_line, load_average, log, machine_info,
                      repo_path)


def measure_large_images_and_video(args) -> dict:
    """Both studies on the demo checkpoint (``--deploy-checkpoint``, else
    ``make demo``'s); None without one."""
    import os.path as osp

    from analysis_tools import sliced_eval, track_eval
    checkpoint = demo_checkpoint(args.deploy_checkpoint)
    if checkpoint is None:
        log('large images / video: no demo checkpoint (run `make demo` or '
            'pass --deploy-checkpoint): no rows')
        return None
    config = osp.join(ROOT, DEMO_CONFIG)
    machine = machine_info(['cpu'])
    start = time.perf_counter()
    log('large images: plain, SAHI, sliced')
    sliced = sliced_eval.run(config=config, checkpoint=checkpoint)
    log('video: instance IDs, IoU + embedding vs IoU')
    tracking = track_eval.run(config=config, checkpoint=checkpoint)
    # the page and its .json never carry the checkout's location
    for settings in (sliced.get('settings', {}), tracking.get('setup', {})):
        for key in ('config', 'checkpoint'):
            if isinstance(settings.get(key), str):
                settings[key] = repo_path(settings[key])
    machine['load average at end'] = load_average()
    machine['section wall time'] = \
        f'{(time.perf_counter() - start) / 60:.1f} min'
    return dict(command=command_line(), machine=machine,
                checkpoint=repo_path(checkpoint), sliced=sliced,
                tracking=tracking)


def render_large_images_and_video(section) -> List[str]:
    if not section:
        return []
    from analysis_tools import sliced_eval, track_eval

    from .fmt import table
    lines = ['## Large images and video', '',
             'Measured by its own run (its command and machine below), the '
             f'demo model `{section["checkpoint"]}`; docs/'
             'large_images_and_video.md explains the methods.', '',
             '```', section['command'], '```', '']
    lines += table(['', ''], [[k, v] for k, v in section['machine'].items()])
    lines += ['### Sliced inference against SAHI', '',
              sliced_eval.render(section['sliced']), '',
              '### Instance IDs across frames', '',
              track_eval.render(section['tracking']), '']
    return lines
