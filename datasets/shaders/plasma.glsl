// Plasma: a sum of travelling sine waves mapped through a cosine palette (demoscene classic).
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = (fragCoord - 0.5 * iResolution.xy) / iResolution.y * (2.0 + 6.0 * iParams[0].x);
    uv = kd_rot(6.2831 * iParams[0].y) * uv;
    float t = iTime;
    float v = sin(uv.x + t) + sin(0.5 * (uv.y + t)) + sin(0.5 * (uv.x + uv.y + t));
    vec2 c = uv + vec2(sin(t / 3.0), cos(t / 2.0)) * (1.0 + 2.0 * iParams[0].z);
    v += sin(sqrt(dot(c, c) + 1.0) + t);
    fragColor = vec4(kd_palette(v * 0.25 * (1.0 + iParams[0].w)), 1.0);
}
